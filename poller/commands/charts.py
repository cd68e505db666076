"""``poller chart push`` and ``poller chart watch``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

from poller.errors import ConfigError


def register(subparsers) -> None:
    chart = subparsers.add_parser("chart", help="package and push charts; watch a chart repo")
    sub = chart.add_subparsers(dest="chart_command", metavar="ACTION", required=True)

    push = sub.add_parser("push", help="package a chart directory and upload it to ChartMuseum")
    push.add_argument("dir", help="chart directory (with Chart.yaml)")
    push.add_argument("--repo", required=True, help="ChartMuseum base URL, e.g. http://chartmuseum:8080")
    push.add_argument("--version", help="override Chart.yaml's version, e.g. 1.4.0-staging.3")
    push.add_argument("--username", default=None)
    push.add_argument("--password-env", default="CHARTMUSEUM_PASSWORD", metavar="VAR",
                      help="environment variable holding the password (default: %(default)s)")
    push.add_argument("--force", action="store_true",
                      help="overwrite an existing version (ChartMuseum must allow it)")
    push.set_defaults(handler=_push)

    watch = sub.add_parser("watch", help="poll chart repositories and trigger helmsman runs")
    watch.add_argument("--config", required=True, help="Slipway config file")
    watch.add_argument("--once", action="store_true", help="reconcile once and exit")
    watch.add_argument("--repo", action="append", default=None, metavar="NAME",
                       help="only this charts.repos entry (repeatable)")
    watch.set_defaults(handler=_watch)


def _push(args: argparse.Namespace) -> int:
    from poller.charts.push import package_chart, push_chart

    chart = package_chart(args.dir, version=args.version)
    password = os.environ.get(args.password_env) if args.username else None
    result = push_chart(chart, args.repo, username=args.username, password=password,
                        force=args.force)
    print(json.dumps({"chart": chart.name, "version": chart.version, "repo": args.repo,
                      "result": result}))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from poller.config import load_config
    from poller.logs import get_logger
    from poller.runtime import Runtime

    log = get_logger("poller.charts")
    runtime = Runtime(load_config(args.config))
    cfg = runtime.config
    watchers = [w for w in runtime.chart_watchers if not args.repo or w.repo.name in args.repo]
    if not watchers:
        raise ConfigError("no chart repositories to watch", file=cfg.path, key="charts.repos")
    stop = threading.Event()
    if not args.once:
        def _stop(signum, frame):
            log.info("signal.received", signal=signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)
    status = 0
    log.info("charts.watch.started", repos=[w.repo.name for w in watchers], once=args.once)
    while True:
        for w in watchers:
            if stop.is_set():
                break
            try:
                res = w.reconcile()
            except Exception as exc:
                if args.once:
                    raise
                log.warning("charts.reconcile.failed", repo=w.repo.name, error=str(exc))
                continue
            if args.once:
                print(json.dumps({"repo": w.repo.name, **res.as_dict()}))
        if args.once:
            return status
        interval = min((r.interval or cfg.poll.interval) for r in (w.repo for w in watchers))
        if stop.wait(interval):
            log.info("charts.watch.stopped")
            return status
