"""``poller agent`` (one per machine) and ``poller fleet status|rollout|pause|resume|abort``."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from poller.config import load_config
from poller.errors import ConfigError, SlipwayError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run this machine's fleet agent (SIGTERM stops it)")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(handler=cmd_agent)

    fleet = sub.add_parser("fleet", help="fleet rollouts: status, rollout, pause, resume, abort")
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = fsub.add_parser("status", help="current, staging and deploy views")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)
    p = fsub.add_parser("rollout", help="start rolling SERVICE out to VERSION (several pairs: one "
                        "deploy queue, dependencies first)")
    p.add_argument("pairs", nargs="+", metavar="SERVICE VERSION")
    p.add_argument("--paused", action="store_true", help="stage only: machines pull and report ready")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(handler=cmd_rollout)
    for action in ("pause", "resume", "abort"):
        p = fsub.add_parser(action, help=f"{action} the rollout of SERVICE")
        p.add_argument("service")
        p.add_argument("--config", "-c", required=True)
        p.set_defaults(handler=cmd_control, action=action)


def cmd_agent(args) -> int:
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    if cfg.fleet.agent is None:
        raise ConfigError("poller agent needs this machine's settings (machine, containers)",
                          file=cfg.path, key="fleet.agent")
    runtime = Runtime(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime.fleet_agent(stop).run()
    return 0


def cmd_status(args) -> int:
    from poller.commands.tables import table
    from poller.fleet import snapshot

    snap = snapshot(_state(args))
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    rows = [[svc, m, info.get("version"), "ready" if m in snap["staging"].get(svc, {}) else ""]
            for svc, machines in sorted(snap["current"].items()) for m, info in sorted(machines.items())]
    print("CURRENT\n" + table(["service", "machine", "version", "staging"], rows))
    print("\nDEPLOY\n" + table(["service", "version", "state"],
                               [[d["service"], d["version"], d["state"]] for d in snap["deploy"]]))
    ros = [[s, r["version"], r["state"], r["detail"].get("error", "")] for s, r in sorted(snap["rollouts"].items())]
    print("\nROLLOUTS\n" + table(["service", "version", "state", "error"], ros))
    return 0


def cmd_rollout(args) -> int:
    if len(args.pairs) % 2:
        raise SlipwayError("give SERVICE VERSION pairs")
    versions = dict(zip(args.pairs[::2], args.pairs[1::2]))
    for ro in _state(args).start_rollouts(versions, paused=args.paused).values():
        print(f"rollout {ro.id}: {ro.service} -> {ro.version} ({ro.state})")
    return 0


def cmd_control(args) -> int:
    ro = getattr(_state(args), args.action)(args.service)
    print(f"rollout {ro.id}: {ro.service} -> {ro.version} ({ro.state})")
    return 0


def _state(args):
    """The fleet of ``--config``; a config without ``fleet.services`` is a config error (not an
    etcd error: there is nothing to ask etcd about)."""
    from poller.runtime import Runtime

    cfg = load_config(args.config)
    if not cfg.fleet.services:
        raise ConfigError("no fleet is configured: add the services the fleet runs",
                          file=cfg.path, key="fleet.services")
    return Runtime(cfg).fleet
