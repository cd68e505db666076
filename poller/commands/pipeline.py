"""``poller run | once | status | check-config``."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

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


def _log_printer(mode: str):
    """What to do with build logs as they stream.

    ``always``: every line of every build log on stderr, prefixed ``[source ref]``.
    ``auto``: progress, not the log: on a terminal one status line kept at the bottom
    (``step 3/7``, ``pushing 1.4.0 (1/2)``) with log lines above it; off a terminal a
    ``build.progress`` log event per step. ``never``: nothing.
    """
    if mode == "never":
        return None
    if mode == "auto":
        import logging

        from poller.commands.progress import ProgressDisplay

        display = ProgressDisplay(sys.stderr)
        if display.tty:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                    handler.setStream(display)
        return display
    lock = threading.Lock()

    def show(plan, text: str) -> None:
        with lock:
            for line in text.splitlines():
                sys.stderr.write(f"[{plan.source} {plan.ref}] {line}\n")
            sys.stderr.flush()
    return show


def cmd_check_config(args) -> int:
    cfg = load_config(args.config)
    print(f"{args.config}: ok ({len(cfg.sources)} source(s), registry "
          f"{cfg.registry.host if cfg.registry else '(none)'}, "
          f"{len(cfg.charts.repos)} chart repo(s))")
    return 0


def cmd_once(args) -> int:
    from poller.logs import mask_value
    from poller.runtime import Runtime

    runtime = Runtime(load_config(args.config))
    cfg = runtime.config
    pipeline = runtime.build_pipeline(on_build_log=_log_printer(args.logs))
    try:
        for name in args.source or []:
            cfg.source(name)
        reports = pipeline.run_once(args.source)
        extra = _charts_once(runtime)
    except KeyboardInterrupt:
        if running := pipeline.running_builds():
            print(f"poller: interrupted; letting {running} running build{'s' * (running > 1)} finish "
                  "(Ctrl-C again to stop now: a build cut off is built again next time)",
                  file=sys.stderr, flush=True)
        raise
    finally:
        pipeline.shutdown(wait=True)
    # A plan in back-off is a build that failed before and is not retried yet: still a failure.
    failed = any(r.error for r in reports) or any(
        a.status == "failed" or a.action == "backoff" for r in reports for a in r.actions) or any(
        c.get("error") for c in extra)
    if args.json:
        out = {"ok": not failed, "sources": [
            {"source": r.source, "head": r.head, "error": r.error,
             "actions": [a.as_dict() for a in r.actions]} for r in reports], "charts": extra}
        print(json.dumps(mask_value(out), indent=2))
    else:
        from poller.commands.tables import table

        rows = []
        for r in reports:
            if r.error:
                rows.append([r.source, "-", "-", "error", r.error])
            elif r.head is None and not r.skipped_registry:  # polled, and the branch is not there
                branch = cfg.source(r.source).branch
                rows.append([r.source, f"branch:{branch}", "-", "missing",
                             f"the repository has no branch '{branch}' (names are case-sensitive)"])
            for a in r.actions:
                detail = a.error or (a.digest or "")
                rows.append([r.source, a.ref, a.sha[:12], f"{a.action}/{a.status}", detail])
        print(table(["source", "ref", "commit", "action", "detail"], mask_value(rows)) if rows else "no sources")
    return 1 if failed else 0


def _charts_once(runtime) -> list[dict]:
    out = []
    for watcher in runtime.chart_watchers:
        try:
            result = watcher.reconcile()
            out.append({"repo": watcher.repo.name,
                        "result": result if isinstance(result, (list, dict)) else str(result)})
        except Exception as exc:  # noqa: BLE001 - a boundary: logged, never raised further
            out.append({"repo": watcher.repo.name, "error": str(exc)})
    return out


def cmd_run(args) -> int:
    from poller.api import create_app, serve_in_thread
    from poller.api.dashboard import LiveLogs, tee
    from poller.commands.progress import ProgressDisplay
    from poller.logs import get_logger
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    printer = _log_printer("auto")
    runtime = Runtime(cfg, live_logs=LiveLogs())
    runtime.build_pipeline(on_build_log=tee(printer, runtime.live_logs.on_log))
    runtime.observe()
    if isinstance(printer, ProgressDisplay):
        printer.subscribe(runtime.bus)
    scheduler = runtime.build_scheduler()
    server = None
    if cfg.api.listen:
        server = serve_in_thread(create_app(runtime), cfg.api.listen)
        get_logger("poller.api").info("api.listening", listen=cfg.api.listen, server="waitress",
                                      threads=cfg.api.threads,
                                      token="set" if cfg.api.token else "none (read-only)")
    try:
        scheduler.run_forever(grace=args.grace)
    finally:
        if server is not None:
            server.close()
        runtime.close()
    return 0


def cmd_status(args) -> int:
    from poller.approvals import ApprovalQueue
    from poller.commands.tables import table
    from poller.humanize import ago, took
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    store = Runtime(cfg).store
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
            "approvals": [a.__dict__ for a in pending],
            **({"updates": _updates_status(cfg, store, args.limit)} if cfg.updates.deployments else {})},
            indent=2, default=str))
        return 0
    rows = []
    for s in cfg.sources:
        st = seen.get(s.name, {})
        tags = st.get("tags") or {}
        err = st.get("last_error")
        rows.append([s.name, s.kind, s.branch, (st.get("head") or "-")[:12], len(tags),
                     ago(st.get("last_poll")), f"error: {_clip(err, 60)}" if err else "ok"])
    print(f"SOURCES ({len(rows)})")
    print(table(["name", "kind", "branch", "head", "tags", "polled", "state"], rows) if rows
          else "no sources configured")
    print(f"\nBUILDS (last {len(builds)})" if builds else "\nBUILDS")
    now = time.time()
    print(table(["id", "source", "ref", "commit", "status", "tags", "duration", "when"],
                [[b.id, b.source, b.ref, b.sha[:12],
                  b.status + (f": {_clip(b.error, 40)}" if b.error and b.status != "succeeded" else ""),
                  ",".join(b.tags),
                  took(b.duration if b.duration is not None else
                        (now - b.started_at if b.status == "running" else None)), ago(b.started_at)]
                 for b in builds])
          if builds else "no builds yet")
    if pending:
        print(f"\nPENDING APPROVALS ({len(pending)})")
        print(table(["id", "kind", "subject", "from", "to", "since"],
                    [[a.id, a.kind, a.subject, a.from_version, a.to_version, ago(a.created_at)]
                     for a in pending]))
    if cfg.updates.deployments:
        from poller.commands.updates import render

        st = _updates_status(cfg, store, args.limit)
        st["approvals"] = []  # already listed above
        print("\n" + render(st, ago, table))
    return 0


def _clip(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _updates_status(cfg, store, limit: int) -> dict:
    from poller.updater.status import updates_status

    return updates_status(cfg, store, limit=limit)
