"""A read-only view of the updater for ``poller status``, ``poller updates status`` and the API."""

from __future__ import annotations

from poller.approvals import ApprovalQueue
from poller.rollout.control import RolloutControl
from poller.updater.history import UpdateHistory


def updates_status(cfg, store, *, limit: int = 10) -> dict:
    history = UpdateHistory(store)
    control = RolloutControl(store)
    watched = {w["image"]: w for w in history.watchers()}
    images = sorted({d.image for d in cfg.updates.deployments} | set(watched))
    deployments = []
    for d in cfg.updates.deployments:
        pin = history.pinned(d.name) or ((d.pin, "config") if d.pin else None)
        last = history.list(deployment=d.name, limit=1)
        deployments.append({
            "name": d.name, "image": d.image, "policy": d.policy + (f":{d.tag}" if d.tag else "")
            + (f":{d.pattern}" if d.pattern else ""), "approval": d.approval, "target": d.target.kind,
            "pinned": pin[0] if pin else None, "pinned_by": pin[1] if pin else None,
            "last_update": last[0].__dict__ if last else None})
    return {
        "images": [{"image": i, **{k: v for k, v in watched.get(i, {}).items() if k != "image"}}
                   for i in images],
        "deployments": deployments,
        "approvals": [a.__dict__ for a in ApprovalQueue(store).list(kind="deployment")],
        "updates": [u.__dict__ for u in history.list(limit=limit)],
        "rollouts": [r.__dict__ for r in control.recent(limit)],
    }
