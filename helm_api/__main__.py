"""``helm-api``: serve the helm API (waitress, one process with threads). The only place (with
:mod:`helm_api.wsgi`) that reads the environment and configures logging.

Listens on ``HELM_API_HOST:HELM_API_PORT`` (default ``0.0.0.0:8080``); ``--host``/``--port``
override them. The same command runs in the image (``docker run IMAGE helm-api --port 9090``).
Settings are checked before the server starts: a bad one is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from poller.errors import ConfigError


def build_app():
    from helm_api import create_app
    from helm_api.config import load_log_settings, load_settings
    from poller.logs import register_secret, setup_logging

    logs = load_log_settings()
    setup_logging(level=logs.log_level, fmt=logs.log_format)
    config = load_settings()
    if config.token:
        register_secret(config.token.get_secret_value())
    return create_app(config)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, kubelet) stops like Ctrl-C: cleanly


def main(argv: Sequence[str] | None = None) -> int:
    from helm_api.config import load_serve_config

    parser = argparse.ArgumentParser(
        prog="helm-api", description="Serve the Slipway helm API. "
        "Settings come from HELM_API_* environment variables.")
    parser.add_argument("--host", help="address to bind (env HELM_API_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (env HELM_API_PORT, default 8080)")
    args = parser.parse_args(argv)
    try:
        listen = load_serve_config(args.host, args.port)
        app = build_app()
    except ConfigError as exc:
        print(f"helm-api: config error: {exc}", file=sys.stderr)
        return 2
    from helm_api import MAX_BODY
    from poller.httpapi import serve

    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    try:
        served = serve(app, f"{host}:{listen.port}", max_body=MAX_BODY, name="helm-api")
    except ConfigError as exc:  # the address can't be bound: name the setting at fault
        app.extensions["helm_api"]["runner"].stop()
        given = args.port if exc.key == "port" else args.host
        where = f"--{exc.key}" if given is not None else f"HELM_API_{(exc.key or 'host').upper()}"
        print(f"helm-api: config error: {'command line' if given is not None else '<environment>'}: "
              f"{where}: {exc.reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    try:
        served.wait()
    except KeyboardInterrupt:
        pass
    finally:
        served.close()
        app.extensions["helm_api"]["runner"].stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
