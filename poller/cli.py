"""The ``poller`` command line. The only place (with ``helm_api.__main__``) that reads the
environment, configures logging and turns Slipway errors into exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from poller.errors import ConfigError, SlipwayError


def build_parser() -> argparse.ArgumentParser:
    # Each module adds its own subcommands with ``register(subparsers)``.
    from poller.commands import (
        approvals,
        charts,
        fleet,
        pipeline,
        plugins,
        releases,
        rollback,
        store,
        updates,
        worker,
    )

    parser = argparse.ArgumentParser(
        prog="poller", allow_abbrev=False, description="Slipway: poll sources, build and push images, roll them out.")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="auto", choices=["auto", "json", "text"],
                        help="auto: readable on a terminal, JSON otherwise")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (pipeline, approvals, charts, updates, fleet, plugins, rollback, releases,
                   store, worker):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from poller.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except ConfigError as exc:
        print(f"poller: config error: {exc}", file=sys.stderr)
        return 2
    except SlipwayError as exc:
        print(f"poller: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("poller: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
