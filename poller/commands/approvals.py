"""``poller approvals list | approve ID | reject ID``."""

from __future__ import annotations

import argparse
import json

from poller.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("approvals", help="updates waiting for a person")
    asub = p.add_subparsers(dest="approvals_command", required=True, metavar="ACTION")
    lp = asub.add_parser("list", help="pending approvals (--all for every state)")
    lp.add_argument("--config", "-c", required=True)
    lp.add_argument("--all", action="store_true")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(handler=cmd_list)
    for name in ("approve", "reject"):
        ap = asub.add_parser(name, help=f"{name} one pending update")
        ap.add_argument("id", type=int)
        ap.add_argument("--config", "-c", required=True)
        ap.add_argument("--by", default="cli", help="who decided (recorded in the audit log)")
        ap.set_defaults(handler=cmd_decide, decision=name)


def _queue(args):
    from poller.approvals import ApprovalQueue
    from poller.runtime import Runtime

    return ApprovalQueue(Runtime(load_config(args.config)).store)


def cmd_list(args) -> int:
    from poller.commands.tables import table
    from poller.humanize import ago

    items = _queue(args).list(status=None if args.all else "pending")
    if args.json:
        print(json.dumps([a.__dict__ for a in items], indent=2))
        return 0
    if not items:
        print("no approvals" if args.all else "no pending approvals")
        return 0
    print(table(["id", "kind", "subject", "from", "to", "status", "since", "reason"],
                [[a.id, a.kind, a.subject, a.from_version, a.to_version, a.status,
                  ago(a.created_at), a.reason] for a in items]))
    return 0


def cmd_decide(args) -> int:
    q = _queue(args)
    appr = q.approve(args.id, by=args.by) if args.decision == "approve" else q.reject(args.id, by=args.by)
    print(f"approval {appr.id}: {appr.subject} -> {appr.to_version}: {appr.status}")
    return 0
