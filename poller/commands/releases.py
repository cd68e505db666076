"""``poller releases``: the release board on the terminal."""

from __future__ import annotations

import argparse
import json

from poller.config import load_config
from poller.imageref import ImageRef


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("releases", help="per service: newest builds, what runs where, what waits")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_releases)


def _image(ref: str) -> str:
    """``host/repo:tag@sha256:abc…`` as ``repo:tag@abc…`` (12 hex digits)."""
    image = ImageRef.parse(ref)
    return image.name + (f":{image.tag}" if image.tag else "") \
        + (f"@{_short(image.digest)}" if image.digest else "")


def _short(digest: str | None) -> str:
    return (digest or "-").replace("sha256:", "")[:12]


def cmd_releases(args) -> int:
    from poller.commands.tables import table
    from poller.humanize import ago
    from poller.releases import release_board
    from poller.runtime import Runtime

    runtime = Runtime(load_config(args.config))
    cfg = runtime.config
    boards = release_board(cfg, runtime.store, targets=runtime.targets)
    if args.json:
        print(json.dumps([b.as_dict() for b in boards], indent=2, default=str))
        return 0
    if not boards:
        print("no services (sources) configured")
        return 0
    for b in boards:
        print(f"== {b.service}  {b.image}  (branch {b.branch})")
        if b.channels:
            print(table(["channel", "version", "commit", "digest", "build", "age"],
                        [[c.channel, c.version, c.sha[:12], _short(c.digest), f"#{c.build_id}",
                          ago(c.at)] for c in b.channels]))
        else:
            print("no builds yet")
        if b.running:
            print(table(["deployment", "policy", "target", "runs now", "digest", "pinned"],
                        [[r.deployment, r.policy, r.target, _image(r.image) if r.image else f"({r.error})",
                          _short(r.digest), f"{r.pinned} by {r.pinned_by}" if r.pinned else ""]
                         for r in b.running]))
        if b.hold:
            print(f"staging held at {_short(b.hold['digest'])} by {b.hold['by']}"
                  f"{': ' + b.hold['reason'] if b.hold['reason'] else ''} (until the next merge)")
        for a in b.approvals:
            print(f"waiting for approval #{a['id']}: {a['subject']} {a['from_version']} -> "
                  f"{a['to_version']} ({a['reason']})")
        for r in b.rollouts:
            print(f"rollout of {r.deployment} to {r.to_ref}: {r.state}, {r.done}/{r.total} servers")
        if b.last_change:
            lc = b.last_change
            print(f"last change: {lc['what']} {lc['subject']} by {lc['by'] or '?'}, {ago(lc['at'])}")
        print()
    return 0
