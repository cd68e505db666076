"""``poller updates status | once | pin | unpin | approve | reject | pause | resume | abort``."""

from __future__ import annotations

import argparse
import json

from poller.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("updates", help="images tracked for deployments: status, pins, approvals, rollouts")
    usub = p.add_subparsers(dest="updates_command", required=True, metavar="ACTION")

    sp = usub.add_parser("status", help="tracked images, deployments, pending approvals, last updates")
    sp.add_argument("--config", "-c", required=True)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--limit", type=int, default=10)
    sp.set_defaults(handler=cmd_status)

    op = usub.add_parser("once", help="one check of every tracked image and deployment")
    op.add_argument("--config", "-c", required=True)
    op.add_argument("--json", action="store_true")
    op.set_defaults(handler=cmd_once)

    pp = usub.add_parser("pin", help="keep a deployment on a version until unpinned")
    pp.add_argument("deployment")
    pp.add_argument("version")
    pp.add_argument("--config", "-c", required=True)
    pp.add_argument("--by", default="cli")
    pp.set_defaults(handler=cmd_pin)

    up = usub.add_parser("unpin", help="let automation move a deployment again")
    up.add_argument("deployment")
    up.add_argument("--config", "-c", required=True)
    up.add_argument("--by", default="cli")
    up.set_defaults(handler=cmd_unpin)

    for name in ("approve", "reject"):
        ap = usub.add_parser(name, help=f"{name} a pending update (approval id)")
        ap.add_argument("id", type=int)
        ap.add_argument("--config", "-c", required=True)
        ap.add_argument("--by", default="cli")
        ap.set_defaults(handler=cmd_decide, decision=name)

    for name in ("pause", "resume", "abort"):
        rp = usub.add_parser(name, help=f"{name} the gradual rollout of a deployment")
        rp.add_argument("deployment")
        rp.add_argument("--config", "-c", required=True)
        rp.add_argument("--by", default="cli")
        rp.set_defaults(handler=cmd_rollout, action=name)


def _open(args):
    from poller.runtime import Runtime

    runtime = Runtime(load_config(args.config))
    return runtime.config, runtime.store


def _known(cfg, name: str) -> None:
    from poller.errors import ConfigError

    if cfg.updates.deployment(name) is None:
        raise ConfigError(f"no deployment named '{name}'", file=cfg.path, key="updates.deployments")


def cmd_status(args) -> int:
    from poller.commands.tables import table
    from poller.humanize import ago
    from poller.updater.status import updates_status

    cfg, store = _open(args)
    st = updates_status(cfg, store, limit=args.limit)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(render(st, ago, table))
    return 0


def render(st: dict, ago, table) -> str:
    out = ["TRACKED IMAGES", table(
        ["image", "checked", "tags", "state"],
        [[i["image"], ago(i.get("last_check")), i.get("tags") if i.get("tags") is not None else "-",
          i.get("last_error") or "ok"] for i in st["images"]]) if st["images"] else "none"]
    out += ["", "DEPLOYMENTS", table(
        ["name", "image", "policy", "approval", "target", "pinned", "last update"],
        [[d["name"], d["image"], d["policy"], d["approval"], d["target"], d["pinned"] or "-",
          (f"{d['last_update']['from_ref'] or '?'} -> {d['last_update']['to_ref']} "
           f"{d['last_update']['status']}") if d["last_update"] else "-"] for d in st["deployments"]])
        if st["deployments"] else "none"]
    if st["approvals"]:
        out += ["", "PENDING UPDATE APPROVALS", table(
            ["id", "deployment", "from", "to", "since"],
            [[a["id"], a["subject"], a["from_version"], a["to_version"], ago(a["created_at"])]
             for a in st["approvals"]])]
    if st["updates"]:
        out += ["", "LAST UPDATES", table(
            ["id", "deployment", "from", "to", "policy", "approved by", "result", "when"],
            [[u["id"], u["deployment"], u["from_ref"], u["to_ref"], u["policy"], u["approved_by"] or "-",
              u["status"] + (f": {u['error'][:60]}" if u["error"] else ""), ago(u["started_at"])]
             for u in st["updates"]])]
    return "\n".join(out)


def cmd_once(args) -> int:
    from poller.runtime import Runtime

    outcomes = Runtime(load_config(args.config)).engine.cycle()
    if args.json:
        print(json.dumps([o.as_dict() for o in outcomes], indent=2))
    else:
        from poller.commands.tables import table

        print(table(["deployment", "action", "from", "to", "detail"],
                    [[o.deployment, o.action, o.from_ref, o.to_ref, o.detail[:80]] for o in outcomes]))
    return 1 if any(o.action == "failed" for o in outcomes) else 0


def cmd_pin(args) -> int:
    from poller.updater.history import UpdateHistory

    cfg, store = _open(args)
    _known(cfg, args.deployment)
    UpdateHistory(store).pin(args.deployment, args.version, by=args.by)
    print(f"{args.deployment}: pinned to {args.version}")
    return 0


def cmd_unpin(args) -> int:
    from poller.updater.history import UpdateHistory

    cfg, store = _open(args)
    _known(cfg, args.deployment)
    removed = UpdateHistory(store).unpin(args.deployment, by=args.by)
    print(f"{args.deployment}: {'unpinned' if removed else 'was not pinned'}")
    return 0


def cmd_decide(args) -> int:
    from poller.approvals import ApprovalQueue

    _, store = _open(args)
    q = ApprovalQueue(store)
    appr = q.approve(args.id, by=args.by) if args.decision == "approve" else q.reject(args.id, by=args.by)
    print(f"approval {appr.id}: {appr.subject} -> {appr.to_version}: {appr.status}")
    return 0


def cmd_rollout(args) -> int:
    from poller.rollout.control import RolloutControl

    cfg, store = _open(args)
    _known(cfg, args.deployment)
    rec = getattr(RolloutControl(store), args.action)(args.deployment, by=args.by)
    print(f"{args.deployment}: rollout {rec.id} to {rec.to_ref}: {rec.state}")
    return 0
