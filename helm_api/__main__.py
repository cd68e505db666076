"""``helm-api``: serve the helm API. The only place (with :mod:`helm_api.wsgi`) that reads
the environment and configures logging."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from poller.errors import ConfigError


def build_app():
    from helm_api import create_app
    from helm_api.config import load_settings
    from poller.logs import register_secret, setup_logging

    setup_logging(level=os.environ.get("HELM_API_LOG_LEVEL", "info"),
                  fmt=os.environ.get("HELM_API_LOG_FORMAT", "auto"))
    config = load_settings()
    if config.token:
        register_secret(config.token.get_secret_value())
    return create_app(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helm-api", description="Serve the Slipway helm API. "
                                     "Settings come from HELM_API_* environment variables.")
    parser.add_argument("--host", default=os.environ.get("HELM_API_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HELM_API_PORT", "8080")))
    args = parser.parse_args(argv)
    try:
        app = build_app()
    except ConfigError as exc:
        print(f"helm-api: config error: {exc}", file=sys.stderr)
        return 2
    from helm_api import MAX_BODY
    from poller.httpapi import serve

    served = serve(app, f"{args.host}:{args.port}", max_body=MAX_BODY, name="helm-api")
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
