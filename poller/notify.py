"""Send notifications to the configured webhooks: Slack-compatible or plain JSON.

A failing webhook is logged and forgotten: notifying never raises into the caller, so a
broken chat integration cannot stop an update.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from poller.events import (
    ApprovalRequested,
    BuildFinished,
    EventBus,
    RolloutStopped,
    UpdateFinished,
)
from poller.http import make_session, request
from poller.logs import get_logger
from poller.settings.notify import NotifyConfig

log = get_logger(__name__)

_ICONS = {"succeeded": ":white_check_mark:", "failed": ":x:", "requested": ":raised_hand:"}


def slack_payload(event: str, text: str, fields: dict[str, Any]) -> dict:
    icon = _ICONS.get(event.rsplit(".", 1)[-1], ":information_source:")
    lines = [f"*{k}*: {v}" for k, v in fields.items() if v not in (None, "")]
    return {"text": f"{icon} {text}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {text}"}},
                       *([{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
                         if lines else [])]}


class Notifier:
    def __init__(self, cfg: NotifyConfig, *, session=None):
        self.cfg = cfg
        self.session = session or make_session("notify", timeout=(5.0, 10.0))

    def send(self, event: str, text: str, **fields: Any) -> int:
        """Post to every webhook that wants ``event``; returns how many accepted it."""
        ok = 0
        for hook in self.cfg.webhooks:
            if not hook.wants(event):
                continue
            try:
                body = (slack_payload(event, text, fields) if hook.format == "slack"
                        else {"event": event, "text": text, "at": time.time(), **fields})
                request(self.session, "POST", hook.url.get_secret_value(), upstream="notify",
                        json=body, timeout=hook.timeout)
                ok += 1
            except Exception as exc:  # noqa: BLE001 - never into the caller
                log.warning("notify.failed", notification=event, error=str(exc))
        return ok


class Notifications:
    """What a team hears about, decided here once: subscribed to the bus by event type.

    From the bus: failed builds, deployed releases (a release build succeeded), finished
    updates, approvals the update engine asks for, and rollouts that stopped (failed, aborted or
    paused). :meth:`announce` (a periodic job of ``poller run``) reads the store for what other
    processes left behind: approvals waiting and rollouts that stopped since this process
    started. Each approval and stopped rollout is announced once, remembered in the store's
    events (kind ``notify``), so a restart or a second path does not repeat it.
    """

    def __init__(self, notifier: Notifier, store: Any, *, clock: Callable[[], float] = time.time):
        self.notifier = notifier
        self.store = store
        self.clock = clock
        self.since = clock()

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(BuildFinished, self.on_build)
        bus.subscribe(UpdateFinished, self.on_update)
        bus.subscribe(ApprovalRequested, self.on_approval)
        bus.subscribe(RolloutStopped, self.on_rollout_stopped)

    def _told(self, key: str) -> None:
        if self.store is not None:
            self.store.record_event("notify", key)

    def on_build(self, e: BuildFinished) -> None:
        if not e.ok:
            self.notifier.send("build.failed", f"Build of {e.source} {e.ref} ({e.sha[:12]}) failed",
                               build_id=e.build_id, source=e.source, ref=e.ref, image=e.image,
                               error=e.error)
        elif e.kind == "release":
            self.notifier.send("release.deployed", f"Released {e.image}:{e.tags[0] if e.tags else '?'}",
                               build_id=e.build_id, source=e.source, ref=e.ref, image=e.image,
                               tags=",".join(e.tags), digest=e.digest)

    def on_update(self, e: UpdateFinished) -> None:
        status = "succeeded" if e.ok else "failed"
        self.notifier.send(e.name, f"{e.deployment}: {e.from_ref or '?'} -> {e.to_ref} {status}"
                           + (f": {e.error}" if e.error else ""),
                           deployment=e.deployment, image=e.image, policy=e.policy, reason=e.reason,
                           approved_by=e.approved_by)

    def on_approval(self, e: ApprovalRequested) -> None:
        self.notifier.send(e.name, f"{e.subject}: {e.from_version} -> {e.to_version} waits for approval "
                           f"(#{e.approval_id})", deployment=e.subject, approval=e.approval_id,
                           reason=e.reason)
        self._told(f"approval:{e.approval_id}")

    def on_rollout_stopped(self, e: RolloutStopped) -> None:
        self.notifier.send(e.name, f"Rollout of {e.deployment} to {e.to_ref} {e.state}",
                           deployment=e.deployment, to_ref=e.to_ref, state=e.state, step=e.step,
                           message=e.message)
        if e.rollout_id is not None:
            self._told(f"rollout:{e.rollout_id}:{e.state}")

    def announce(self) -> int:
        """Announce what the store holds and nobody announced yet; returns how many went out."""
        from poller.approvals import ApprovalQueue
        from poller.rollout.control import RolloutControl

        store = self.store
        told = {e["subject"] for e in store.events(kind="notify", limit=10000)}
        sent = 0
        for a in ApprovalQueue(store).list():
            key = f"approval:{a.id}"
            if key in told:
                continue
            self.notifier.send("approval.requested",
                               f"Approval needed: {a.subject} {a.from_version or '?'} -> {a.to_version}",
                               approval_id=a.id, kind=a.kind, subject=a.subject,
                               from_version=a.from_version, to_version=a.to_version, reason=a.reason)
            self._told(key)
            sent += 1
        for r in RolloutControl(store).recent(50):
            key = f"rollout:{r.id}:{r.state}"
            if r.state not in ("failed", "aborted", "paused") or r.updated_at < self.since or key in told:
                continue
            self.notifier.send("rollout.stopped", f"Rollout of {r.deployment} to {r.to_ref} {r.state}",
                               deployment=r.deployment, to_ref=r.to_ref, state=r.state, step=r.step,
                               message=r.message)
            self._told(key)
            sent += 1
        return sent


def subscribe_notifications(cfg: NotifyConfig, store: Any, bus: EventBus) -> Notifications | None:
    """Wire ``notify:`` to ``bus`` (``None`` when no webhook is configured)."""
    if not cfg.webhooks:
        return None
    notifications = Notifications(Notifier(cfg), store)
    notifications.subscribe(bus)
    return notifications
