"""``poller worker --config F [--concurrency N] [--queue Q]``: run build jobs from the queue."""

from __future__ import annotations

import argparse

from poller.config import load_config
from poller.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run build jobs from the PostgreSQL store's queue")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--concurrency", type=int, default=None,
                   help="builds at once (default: build.concurrency)")
    p.add_argument("--queue", action="append", default=None,
                   help="queue to take jobs from (repeatable; default: store.queue.name)")
    p.set_defaults(handler=cmd_worker)


def cmd_worker(args) -> int:
    from poller.queue import run_worker
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    if args.concurrency is not None and not 1 <= args.concurrency <= 64:
        raise ConfigError("--concurrency must be between 1 and 64")
    runtime = Runtime(cfg)
    store = runtime.store
    if not store.pg:
        raise ConfigError("poller worker needs a PostgreSQL store (store.url: postgresql://...); "
                          "with SQLite, builds run inside poller run", file=cfg.path, key="store.url")
    pipeline = runtime.build_pipeline(queue=False)
    try:
        run_worker(pipeline, cfg.store_target, queues=args.queue or [cfg.store.queue.name],
                   concurrency=args.concurrency or cfg.build.concurrency, lease=cfg.store.queue.lease)
    finally:
        pipeline.shutdown(wait=False)  # its claims heartbeat ends before the interpreter does
    return 0
