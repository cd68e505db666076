"""``poller run | once | status | check-config``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from poller.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="poll and build forever (SIGTERM stops cleanly)")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--grace", type=float, default=300.0,
                   help="seconds running builds get to finish on shutdown")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("once", help="one full pass over every source; waits for its builds")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.add_argument("--source", action="append", help="only this source (repeatable)")
    p.add_argument("--logs", choices=["auto", "always", "never"], default="auto",
                   help="stream build logs to stderr (auto: when it is a terminal)")
    p.set_defaults(handler=cmd_once)

    p = sub.add_parser("status", help="sources, last seen refs, last builds")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--log", type=int, metavar="BUILD_ID", help="print the log of one build")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("config")
    p.set_defaults(handler=cmd_check_config)


def _docker_host() -> str | None:
    return os.environ.get("DOCKER_HOST")


def _log_printer(mode: str):
    if mode == "never" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    lock = threading.Lock()

    def show(plan, text: str) -> None:
        with lock:
            for line in text.splitlines():
                sys.stderr.write(f"[{plan.source} {plan.ref}] {line}\n")
            sys.stderr.flush()
    return show


def cmd_check_config(args) -> int:
    cfg = load_config(args.config)
    print(f"{args.config}: ok ({len(cfg.sources)} source(s), registry {cfg.registry.host}, "
          f"{len(cfg.charts.repos)} chart repo(s))")
    return 0


def cmd_once(args) -> int:
    from poller.app import build_pipeline

    cfg = load_config(args.config)
    pipeline = build_pipeline(cfg, docker_base_url=_docker_host(), on_build_log=_log_printer(args.logs))
    try:
        for name in args.source or []:
            cfg.source(name)
        reports = pipeline.run_once(args.source)
        extra = _charts_once(cfg, pipeline.store)
    finally:
        pipeline.shutdown(wait=True)
    failed = any(r.error for r in reports) or any(
        a.status == "failed" for r in reports for a in r.actions) or any(c.get("error") for c in extra)
    if args.json:
        out = {"ok": not failed, "sources": [
            {"source": r.source, "head": r.head, "error": r.error,
             "actions": [a.as_dict() for a in r.actions]} for r in reports], "charts": extra}
        print(json.dumps(out, indent=2))
    else:
        from poller.commands.tables import table

        rows = []
        for r in reports:
            if r.error:
                rows.append([r.source, "-", "-", "error", r.error])
            for a in r.actions:
                detail = a.error or (a.digest or "")
                rows.append([r.source, a.ref, a.sha[:12], f"{a.action}/{a.status}", detail])
        print(table(["source", "ref", "commit", "action", "detail"], rows) if rows else "no sources")
    return 1 if failed else 0


def _charts_once(cfg, store) -> list[dict]:
    if not cfg.charts.repos:
        return []
    try:
        from poller.charts.watcher import ChartWatcher
    except ModuleNotFoundError:
        return []
    out = []
    for repo in cfg.charts.repos:
        try:
            result = ChartWatcher(repo, cfg.charts, store).reconcile()
            out.append({"repo": repo.name, "result": result if isinstance(result, (list, dict)) else str(result)})
        except Exception as exc:
            out.append({"repo": repo.name, "error": str(exc)})
    return out


#: Domains that run periodic work in ``poller run``: each has ``jobs(cfg, store) -> [(id, interval, fn)]``.
JOB_PROVIDERS = ("poller.updater.jobs", "poller.fleet.jobs", "poller.artifacts.jobs")


def _chart_jobs(cfg, store) -> list:
    import importlib

    jobs = []
    if cfg.charts.repos:
        from poller.charts.watcher import ChartWatcher

        for repo in cfg.charts.repos:
            watcher = ChartWatcher(repo, cfg.charts, store)
            jobs.append((f"charts:{repo.name}", repo.interval or cfg.poll.interval, watcher.reconcile))
    for name in JOB_PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        jobs.extend(module.jobs(cfg, store))
    return jobs


def cmd_run(args) -> int:
    from poller.app import build_pipeline
    from poller.scheduler import Scheduler

    from poller.api import Services, create_app, serve_in_thread
    from poller.logs import get_logger

    cfg = load_config(args.config)
    pipeline = build_pipeline(cfg, docker_base_url=_docker_host(), on_build_log=_log_printer("auto"))
    scheduler = Scheduler(cfg, pipeline, extra_jobs=_chart_jobs(cfg, pipeline.store))
    server = None
    if cfg.api.listen:
        app = create_app(Services(config=cfg, store=pipeline.store, pipeline=pipeline, scheduler=scheduler))
        server = serve_in_thread(app, cfg.api.listen)
        get_logger("poller.api").info("api.listening", listen=cfg.api.listen,
                                      token="set" if cfg.api.token else "none (read-only)")
    try:
        scheduler.run_forever(grace=args.grace)
    finally:
        if server is not None:
            server.shutdown()
    return 0


def cmd_status(args) -> int:
    from poller.app import open_store
    from poller.approvals import ApprovalQueue
    from poller.commands.tables import ago, table

    cfg = load_config(args.config)
    store = open_store(cfg)
    if args.log is not None:
        build = store.get_build(args.log)
        if build is None:
            print(f"poller: no build {args.log}", file=sys.stderr)
            return 1
        sys.stdout.write(build.log)
        return 0
    seen = {s["name"]: s for s in store.sources()}
    builds = store.builds(limit=args.limit)
    pending = ApprovalQueue(store).list()
    if args.json:
        print(json.dumps({
            "sources": [{"name": s.name, "kind": s.kind, "branch": s.branch, "image": s.image,
                         **{k: v for k, v in seen.get(s.name, {}).items() if k != "name"}}
                        for s in cfg.sources],
            "builds": [b.as_dict() for b in builds],
            "approvals": [a.__dict__ for a in pending]}, indent=2, default=str))
        return 0
    rows = []
    for s in cfg.sources:
        st = seen.get(s.name, {})
        tags = st.get("tags") or {}
        rows.append([s.name, s.kind, s.branch, (st.get("head") or "-")[:12], len(tags),
                     ago(st.get("last_poll")), st.get("last_error") or "ok"])
    print("SOURCES")
    print(table(["name", "kind", "branch", "head", "tags", "polled", "state"], rows))
    print("\nBUILDS")
    print(table(["id", "source", "ref", "commit", "status", "tags", "duration", "when"],
                [[b.id, b.source, b.ref, b.sha[:12], b.status, ",".join(b.tags),
                  f"{b.duration:.1f}s" if b.duration else "-", ago(b.started_at)] for b in builds])
          if builds else "no builds yet")
    if pending:
        print("\nPENDING APPROVALS")
        print(table(["id", "kind", "subject", "from", "to", "since"],
                    [[a.id, a.kind, a.subject, a.from_version, a.to_version, ago(a.created_at)]
                     for a in pending]))
    return 0
