"""The release board: per service, what was built, what runs where, what waits, what is held.

One read model for ``poller releases`` and ``/dashboard/releases``. A *service* is a source
(``sources[].name``); its deployments are the ``updates.deployments`` of its image. What a
deployment runs is read from the target itself (the Docker container, the Kubernetes
workload), not from the store; a target that cannot be read says why instead.

:func:`timeline_svg` and :func:`progress_svg` draw the builds/deployments of a service and a
rollout's progress as small inline SVG (no script, no front-end build).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from poller.approvals import ApprovalQueue
from poller.config import Config
from poller.imageref import ImageRef
from poller.logs import get_logger
from poller.rollback import staging_holds
from poller.rollout.control import RolloutControl
from poller.store import Store
from poller.updater.history import UpdateHistory

log = get_logger(__name__)

CHANNELS = ("staging", "release", "prerelease")


@dataclass
class Channel:
    channel: str
    version: str
    sha: str
    digest: str | None
    build_id: int
    at: float


@dataclass
class Running:
    deployment: str
    policy: str
    target: str
    image: str | None = None       # what the target runs now, as it reports it
    digest: str | None = None
    error: str | None = None
    pinned: str | None = None
    pinned_by: str | None = None
    tag: str | None = None         # the tag of ``image`` (what "Pin here" pins)


@dataclass
class Rollout:
    id: int
    deployment: str
    to_ref: str
    state: str
    done: int
    total: int


@dataclass
class ServiceBoard:
    service: str
    image: str
    branch: str
    channels: list[Channel] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)
    approvals: list[dict] = field(default_factory=list)
    hold: dict | None = None
    rollouts: list[Rollout] = field(default_factory=list)
    last_change: dict | None = None
    timeline: list[dict] = field(default_factory=list)   # {at, kind, label, ok}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_target(factory: Any, d: Any) -> tuple[str | None, str | None, str | None]:
    """(image, digest, error) the target reports now."""
    try:
        ref = factory.target(d).current()
    except Exception as exc:  # noqa: BLE001 - one unreadable target must not take the board down
        return None, None, f"{type(exc).__name__}: {exc}"[:300]
    if ref is None:
        return None, None, "not running"
    digest = ref.digest or (ImageRef.parse(ref.digests[0]).digest if ref.digests else None)
    return str(ref), digest, None


def release_board(cfg: Config, store: Store, *, targets: Any = None,
                  clock: Callable[[], float] = time.time) -> list[ServiceBoard]:
    """``targets``: the runtime's :class:`~poller.updater.target_factory.TargetFactory` (read when
    deployments are configured)."""
    history = UpdateHistory(store)
    control = RolloutControl(store)
    holds = {h["source"]: h for h in staging_holds(store)}
    pending = ApprovalQueue(store).list()
    events = list(store.events(limit=500))
    boards = []
    for src in cfg.sources:
        board = ServiceBoard(src.name, src.image, src.branch, hold=holds.get(src.name))
        builds = store.builds(source=src.name, limit=200)
        for kind in CHANNELS:
            b = next((b for b in builds if b.kind == kind and b.status == "succeeded"), None)
            if b is not None:
                board.channels.append(Channel(kind, b.tags[0] if b.tags else b.sha[:12], b.sha,
                                              b.digest, b.id, b.finished_at or b.started_at))
        deployments = [d for d in cfg.updates.deployments if d.image == src.image]
        names = {d.name for d in deployments}
        for d in deployments:
            pin = history.pinned(d.name) or ((d.pin, "config") if d.pin else None)
            image, digest, err = _read_target(targets, d)
            board.running.append(Running(
                d.name, d.policy + (f":{d.tag}" if d.tag else ""), d.target.kind, image, digest,
                err, pin[0] if pin else None, pin[1] if pin else None,
                tag=ImageRef.parse(image).tag if image else None))
            for r in control.active(d.name):
                servers = control.servers(r.id)
                done = sum(1 for s in servers if s.get("updated_at"))
                board.rollouts.append(Rollout(r.id, d.name, r.to_ref, r.state, done,
                                              max(len(servers), done, 1)))
        board.approvals = [a.__dict__ for a in pending
                           if a.subject in names or a.subject == src.name]
        subjects = names | {src.name, src.image}
        for e in events:  # newest first
            if e["subject"] in subjects:
                by = e["detail"].get("by") or e["detail"].get("approved_by")
                board.last_change = {"at": e["at"], "what": e["kind"], "subject": e["subject"],
                                     "by": by, "detail": e["detail"]}
                break
        if builds and (board.last_change is None or builds[0].started_at > board.last_change["at"]):
            b = builds[0]
            board.last_change = {"at": b.started_at, "what": f"build {b.status}",
                                 "subject": b.ref, "by": f"commit {b.sha[:12]}", "detail": {}}
        for b in builds[:40]:
            board.timeline.append({"at": b.started_at, "kind": "build", "ok": b.status != "failed",
                                   "label": f"#{b.id} {b.kind} {b.tags[0] if b.tags else ''} "
                                            f"{b.status}"})
        for d in deployments:
            for u in history.list(deployment=d.name, limit=20):
                board.timeline.append({"at": u.started_at, "kind": "deploy",
                                       "ok": u.status != "failed",
                                       "label": f"{d.name} → {u.to_ref} {u.status}"})
        for e in events:
            if e["kind"].startswith("rollback") and e["subject"] == src.name:
                board.timeline.append({"at": e["at"], "kind": "rollback", "ok": True,
                                       "label": f"{e['kind']} by {e['detail'].get('by')}"})
        boards.append(board)
    return boards


# -- drawing -----------------------------------------------------------------------------------
_COLOURS = {"build": "#2f6fdf", "deploy": "#1c9b5b", "rollback": "#d08a00", "failed": "#d0342c"}


def _span_label(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def timeline_svg(points: list[dict], *, now: float | None = None, width: int = 560,
                 height: int = 72) -> str:
    """Builds (top row), deployments (middle) and rollbacks (bottom) over time, as SVG."""
    now = now or time.time()
    esc = html.escape
    rows = {"build": 16, "deploy": 34, "rollback": 52}
    parts = [(f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
              'aria-label="builds and deployments over time">')]
    for label, y in rows.items():
        parts.append(f'<text x="2" y="{y + 4}" font-size="10" fill="#666">{label}s</text>')
        parts.append(f'<line x1="70" y1="{y}" x2="{width - 6}" y2="{y}" stroke="#ddd"/>')
    if points:
        start = min(p["at"] for p in points)
        span = max(now - start, 60.0)
        parts.append(f'<text x="70" y="{height - 1}" font-size="9" fill="#888">'
                     f'{esc(_span_label(now - start))} ago</text>')
        parts.append(f'<text x="{width - 6}" y="{height - 1}" font-size="9" fill="#888" '
                     'text-anchor="end">now</text>')
        for p in sorted(points, key=lambda p: p["at"]):
            x = 70 + (width - 80) * (p["at"] - start) / span
            y = rows.get(p["kind"], 16)
            colour = _COLOURS[p["kind"]] if p["ok"] else _COLOURS["failed"]
            shape = (f'<circle cx="{x:.1f}" cy="{y}" r="5" fill="{colour}">' if p["kind"] == "build"
                     else f'<rect x="{x - 5:.1f}" y="{y - 5}" width="10" height="10" fill="{colour}">')
            close = "</circle>" if p["kind"] == "build" else "</rect>"
            parts.append(f'{shape}<title>{esc(p["label"])}</title>{close}')
    parts.append("</svg>")
    return "".join(parts)


def progress_svg(done: int, total: int, *, width: int = 200, height: int = 14) -> str:
    total = max(total, 1)
    frac = min(1.0, max(0.0, done / total))
    return (f'<svg class="progress" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="progressbar" aria-valuenow="{done}" aria-valuemin="0" '
            f'aria-valuemax="{total}"><rect width="{width}" height="{height}" rx="3" '
            f'fill="#e4e4e4"/><rect width="{width * frac:.1f}" height="{height}" rx="3" '
            f'fill="#1c9b5b"/><text x="{width / 2:.0f}" y="{height - 3}" font-size="10" '
            f'text-anchor="middle" fill="#222">{done}/{total}</text></svg>')
