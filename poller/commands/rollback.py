"""``poller rollback SERVICE --env staging|production``: undo a release in one command."""

from __future__ import annotations

import argparse
import getpass
import json

from poller.config import load_config
from poller.errors import RollbackRefused


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollback", help="roll a service back: staging to an earlier build, production to an "
                         "earlier release (as a new patch tag)",
        description="staging: re-point the staging tag to an earlier build's digest (no rebuild) "
                    "and hold it there until the next merge; production: tag X.Y.Z's commit "
                    "with the next patch version, which the pipeline builds and deploys.")
    p.add_argument("service", help="a sources[].name")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--env", required=True, choices=["staging", "production"])
    p.add_argument("--to", default=None, metavar="BUILD|sha-…|X.Y.Z",
                   help="staging: a build id or sha-<commit> image tag (default: the previous "
                        "staging build); production: the release to go back to (required)")
    p.add_argument("--reason", default="", help="why (recorded in the audit log, notified)")
    p.add_argument("--by", default=None, help="who (default: the user running it)")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    p.add_argument("--unpin", action="store_true",
                   help="staging: release the hold of an earlier rollback now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_rollback)


def cmd_rollback(args) -> int:
    from poller.runtime import Runtime

    rb = Runtime(load_config(args.config)).rollbacks()
    by = args.by or f"cli:{getpass.getuser()}"
    if args.unpin:
        if args.env != "staging":
            raise RollbackRefused("--unpin applies to --env staging only")
        released = rb.unpin(args.service, by=by)
        print(json.dumps({"service": args.service, "released": released}) if args.json else
              (f"{args.service}: staging hold released; the pipeline follows the branch again"
               if released else f"{args.service}: staging was not held"))
        return 0
    if args.env == "production":
        if not args.to:
            raise RollbackRefused("--env production needs --to X.Y.Z (the release to go back to)")
        plan = rb.production(args.service, to=args.to, reason=args.reason, by=by,
                             dry_run=args.dry_run)
    else:
        plan = rb.staging(args.service, to=args.to, reason=args.reason, by=by,
                          dry_run=args.dry_run)
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
        return 0
    head = "would" if plan.dry_run else "did"
    print(f"rollback of {plan.service} ({plan.env}) — {head}:")
    for step in plan.steps:
        print(f"  - {step}")
    if plan.dry_run:
        print("dry run: nothing changed")
    return 0
