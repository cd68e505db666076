"""Per deployment: read what runs, let the policy decide, ask a person when the rule says
so, honour pins, apply, and audit-record every update.

One cycle observes each image once (:class:`~poller.updater.watcher.ImageWatcher`), then
walks the deployments. The running version is read from the target every time, never
remembered: the store only holds history, pins and approvals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from poller.approvals import APPLIED, APPROVED, PENDING, ApprovalQueue
from poller.errors import SlipwayError, UpstreamError
from poller.events import ApprovalRequested, EventBus, UpdateFinished
from poller.logs import get_logger
from poller.policy.base import Move, Offer, Policy, Running
from poller.policy.factory import make_policy
from poller.rollout.control import RolloutControl
from poller.targets.base import ImageRef, TargetError
from poller.updater.history import UpdateHistory
from poller.updater.settings import DeploymentConfig, UpdatesConfig

log = get_logger(__name__)
KIND = "deployment"


@dataclass
class Outcome:
    deployment: str
    action: str   # up-to-date | waiting-approval | updated | failed | pinned | no-offer | rolling | held
    from_ref: str | None = None
    to_ref: str | None = None
    detail: str = ""
    update_id: int | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Tracked:
    cfg: DeploymentConfig
    policy: Policy
    target: object = field(default=None, repr=False)


class UpdateEngine:
    def __init__(self, updates: UpdatesConfig, store, *, watchers: dict, targets, bus: EventBus | None = None,
                 clock: Callable[[], float] = time.time):
        """``watchers``: image -> :class:`ImageWatcher`; ``targets``: a :class:`TargetFactory`;
        ``bus`` gets ApprovalRequested, UpdateFinished and the rollouts' events."""
        self.updates = updates
        self.store = store
        self.history = UpdateHistory(store, clock=clock)
        self.approvals = ApprovalQueue(store, clock=clock)
        self.control = RolloutControl(store, clock=clock)
        self.targets = targets
        self.bus = bus if bus is not None else EventBus()
        self.watchers = watchers
        self.tracked = [_Tracked(d, make_policy(d.policy, tag=d.tag, pattern=d.pattern,
                                                prereleases=d.prereleases)) for d in updates.deployments]
        for t in self.tracked:
            watchers[t.cfg.image].want(mutable_tags=t.policy.mutable_tags, lists_tags=t.policy.lists_tags)

    # -- one cycle ---------------------------------------------------------------------------
    def cycle(self) -> list[Outcome]:
        offers = {image: w.observe() for image, w in self.watchers.items()}
        outcomes = [self.resume(r.deployment) if r.state == "running" else
                    Outcome(r.deployment, "rolling", to_ref=r.to_ref, detail=f"paused: {r.message or ''}")
                    for r in self.control.active()]
        outcomes += self._close_aborted()
        busy = {o.deployment for o in outcomes}
        for t in self.tracked:
            if t.cfg.name in busy:
                continue
            try:
                outcomes.append(self.check(t, offers[t.cfg.image].offer))
            except SlipwayError as exc:
                log.warning("update.check_failed", deployment=t.cfg.name, error=str(exc))
                outcomes.append(Outcome(t.cfg.name, "failed", detail=str(exc)))
            except Exception as exc:  # one broken target must not stop the others
                log.error("update.check_crashed", deployment=t.cfg.name, error=repr(exc), exc_info=True)
                outcomes.append(Outcome(t.cfg.name, "failed", detail=f"{type(exc).__name__}: {exc}"))
        return outcomes

    def _target(self, t: _Tracked):
        if t.target is None:
            t.target = self.targets.target(t.cfg)
        return t.target

    def _skip(self, name: str) -> set[str]:
        return {a.to_version for a in self.approvals.list(status=None, kind=KIND)
                if a.subject == name and a.status in ("rejected", "expired")}

    def check(self, t: _Tracked, offer: Offer | None) -> Outcome:
        d = t.cfg
        target = self._target(t)
        running = target.current()
        from_ref = running.ref if running else None
        pin = self.history.pinned(d.name) or ((d.pin, "config") if d.pin else None)
        if pin is not None:
            version, who = pin
            if running is not None and running.tag == version:
                return Outcome(d.name, "pinned", from_ref, version, f"pinned by {who}")
            move = Move(tag=version, digest=None, reason=f"pinned to {version} by {who}")
            if self.history.failed_before(d.name, move.ref):
                return Outcome(d.name, "held", from_ref, move.ref, "the pinned version failed before")
            return self.apply(t, running, move, approved_by=f"pin:{who}")
        if offer is None:
            return Outcome(d.name, "no-offer", from_ref, detail="registry not readable this cycle")
        out, waiting = self._decide(t, running, from_ref, offer)
        # a request nobody answered that this cycle no longer proposes (a newer major came, or
        # the deployment got there another way) leaves the pending list
        self.approvals.supersede(kind=KIND, subject=d.name, keep=waiting)
        return out

    def _decide(self, t: _Tracked, running: ImageRef | None, from_ref: str | None,
                offer: Offer) -> tuple[Outcome, set[str]]:
        """The outcome, and the refs now waiting for a person."""
        d = t.cfg
        skip = self._skip(d.name)
        current = Running(tag=running.tag if running else None, digest=running.digest if running else None,
                          digests=running.digests if running else ())
        next_major = getattr(t.policy, "next_major", None)
        if d.approval == "none" or next_major is None:
            out = (self._resolve(t, running, from_ref, skip, lambda s: t.policy.decide(current, offer, skip=s))
                   or Outcome(d.name, "up-to-date", from_ref))
            return out, {out.to_ref} if out.action == "waiting-approval" else set()  # type: ignore[arg-type]
        # Semver with approvals (the README's policy x approval table): a higher major is put to
        # a person; while it waits, moves within the running major go on by the approval rule.
        major = self._resolve(t, running, from_ref, skip, lambda s: next_major(current, offer, skip=s))
        if major is not None and major.action not in ("waiting-approval", "held"):
            return major, set()
        waiting = {major.to_ref} if major is not None and major.action == "waiting-approval" else set()
        within_major: Any = t.policy.decide   # SemverPolicy.decide takes same_major=
        within = self._resolve(t, running, from_ref, skip,
                               lambda s: within_major(current, offer, skip=s, same_major=True))
        if within is None:
            return major or Outcome(d.name, "up-to-date", from_ref), waiting  # type: ignore[return-value]
        if within.action == "waiting-approval":
            waiting.add(within.to_ref)
        if major is not None:
            waits = f"{major.to_ref}: {major.action} ({major.detail})"
            within.detail = "; ".join(x for x in (within.detail, waits) if x)
        return within, waiting  # type: ignore[return-value]

    def _resolve(self, t: _Tracked, running: ImageRef | None, from_ref: str | None, skip: set[str],
                 propose: Callable[[set[str]], Move | None]) -> Outcome | None:
        """Apply, or put to a person, the first move ``propose`` makes that nobody rejected;
        ``None`` when it proposes nothing."""
        d = t.cfg
        while True:
            move = propose(skip)
            if move is None:
                return None
            if self.history.failed_before(d.name, move.ref):
                return Outcome(d.name, "held", from_ref, move.ref,
                               "this version failed before; waiting for a newer one")
            if not self._needs_approval(d, move):
                return self.apply(t, running, move, approved_by=None)
            t0 = self.approvals.clock()
            ttl = d.approval_ttl or self.updates.approval_ttl
            appr = self.approvals.request(kind=KIND, subject=d.name, to_version=move.ref,
                                          from_version=from_ref, reason=move.reason, ttl=ttl)
            if appr.status == PENDING:
                if appr.created_at >= t0:
                    self.store.record_event("update.approval", d.name, approval=appr.id, to_ref=move.ref,
                                            from_ref=from_ref, reason=move.reason)
                    self.bus.publish(ApprovalRequested(approval_id=appr.id, kind=KIND, subject=d.name,
                                                       to_version=move.ref, from_version=from_ref,
                                                       reason=move.reason))
                return Outcome(d.name, "waiting-approval", from_ref, move.ref, f"approval {appr.id}")
            if appr.status in (APPROVED, APPLIED):
                out = self.apply(t, running, move, approved_by=appr.decided_by or "?")
                if out.action in ("updated", "rolling"):
                    self.approvals.mark_applied(appr.id)
                return out
            skip.add(move.ref)   # rejected or expired: never proposed again

    @staticmethod
    def _needs_approval(d: DeploymentConfig, move: Move) -> bool:
        return d.approval == "all" or (d.approval == "major" and move.major)

    # -- applying ------------------------------------------------------------------------------
    def apply(self, t: _Tracked, running: ImageRef | None, move: Move, *, approved_by: str | None) -> Outcome:
        d = t.cfg
        target = self._target(t)
        new = ImageRef(d.image, move.tag, move.digest)
        from_ref = running.ref if running else None
        uid = self.history.start(deployment=d.name, image=d.image, from_ref=from_ref, to_ref=move.ref,
                                 policy=t.policy.name, reason=move.reason, approved_by=approved_by)
        log.info("update.start", deployment=d.name, image=d.image, from_ref=from_ref, to_ref=move.ref,
                 reason=move.reason, approved_by=approved_by)
        try:
            applied = target.apply(new)
        except (TargetError, SlipwayError) as exc:
            return self._finish(d, uid, ok=False, error=str(exc), from_ref=from_ref, to_ref=move.ref)
        if d.rollout is not None:
            for old in self.control.active(d.name):
                if old.to_ref != move.ref:
                    self.control.set_state(old.id, "aborted", message=f"superseded by {move.ref}")
                    self._finish_superseded(d.name, old.to_ref, move.ref)
            self.control.start(d.name, move.ref, str(new))
            return self.resume(d.name, applied=applied.detail)
        reload = self._reload_servers(t) if d.reload is not None else None
        if reload and any(not r["ok"] for r in reload):
            return self._finish(d, uid, ok=False, error="reload failed on "
                                + ", ".join(r["server"] for r in reload if not r["ok"]),
                                from_ref=from_ref, to_ref=move.ref, target=applied.detail, reload=reload)
        return self._finish(d, uid, ok=True, from_ref=from_ref, to_ref=move.ref, target=applied.detail,
                            reload=reload)

    def _reload_servers(self, t: _Tracked) -> list[dict]:
        d = t.cfg
        reloader = self.targets.reloader(d)
        target = self._target(t)
        if d.target.docker is not None:
            from poller.targets.docker_host import container_servers

            servers = container_servers(target)
        elif d.target.kubernetes is not None:
            from poller.targets.kubernetes import workload_servers

            servers = workload_servers(target, self.targets.selector(d, target))
        else:
            return []
        out = []
        for name, address in servers:
            r = reloader.reload(name, address)
            out.append({"server": name, "ok": r.ok, "attempts": r.attempts, "detail": r.detail})
        return out

    def _digest_of(self, image: str) -> Callable[[str], str | None] | None:
        """image:tag -> the digest the tag points at in the registry (the rollout's health gate compares it)."""
        watcher = self.watchers.get(image)
        if watcher is None:
            return None

        def digest_of(ref: str) -> str | None:
            r = ImageRef.parse(ref)
            if r.repository != image:
                return None
            return watcher.client.head_manifest(watcher.repository, r.tag or "latest")
        return digest_of

    def resume(self, deployment: str, applied: dict | None = None) -> Outcome:
        """Run (or continue) the active rollout of ``deployment``; finishes its audit record."""
        t = next(x for x in self.tracked if x.cfg.name == deployment)
        rec = next((r for r in self.control.active(deployment)), None)
        if rec is None:
            return Outcome(deployment, "up-to-date")
        uid = self._open_update(deployment, rec.to_ref)
        rollout = self.targets.pod_rollout(t.cfg, self._target(t), self.control, bus=self.bus,
                                           digest_of=self._digest_of(t.cfg.image))
        try:
            result = rollout.run(deployment, rec.to_ref, rec.image)
        except UpstreamError as exc:   # the API server hiccuped: continue from here next cycle
            log.warning("rollout.interrupted", deployment=deployment, error=str(exc))
            return Outcome(deployment, "rolling", to_ref=rec.to_ref, detail=f"interrupted: {exc}",
                           update_id=uid)
        except SlipwayError as exc:
            self.control.set_state(rec.id, "failed", message=str(exc))
            return self._finish(t.cfg, uid, ok=False, error=str(exc), to_ref=rec.to_ref,
                                servers=self.control.servers(rec.id), target=applied)
        if result.state == "succeeded":
            return self._finish(t.cfg, uid, ok=True, to_ref=rec.to_ref, servers=self.control.servers(rec.id),
                                target=applied)
        if result.state == "aborted":
            return self._finish(t.cfg, uid, ok=False, error=f"rollout aborted: {result.message}",
                                to_ref=rec.to_ref, servers=self.control.servers(rec.id))
        return Outcome(deployment, "rolling", to_ref=rec.to_ref, detail=f"{result.state}: {result.message}",
                       update_id=uid)

    def _close_aborted(self) -> list[Outcome]:
        """A person aborted a rollout (from another process): its audit record says so."""
        out = []
        for d in {t.cfg.name: t.cfg for t in self.tracked}.values():
            for rec in self.control.recent(20):
                if rec.deployment != d.name or rec.state != "aborted":
                    continue
                uid = self._open_update(d.name, rec.to_ref)
                if uid is not None:
                    out.append(self._finish(d, uid, ok=False, error=f"rollout aborted: {rec.message}",
                                            to_ref=rec.to_ref, servers=self.control.servers(rec.id)))
        return out

    def _open_update(self, deployment: str, to_ref: str) -> int | None:
        row = self.store.execute("SELECT id FROM updates WHERE deployment=? AND to_ref=? AND status='running'"
                                 " ORDER BY id DESC LIMIT 1", (deployment, to_ref)).fetchone()
        return row["id"] if row else None

    def _finish_superseded(self, deployment: str, old_ref: str, new_ref: str) -> None:
        uid = self._open_update(deployment, old_ref)
        if uid is not None:
            self.history.finish(uid, ok=False, error=f"superseded by {new_ref}")

    def _finish(self, d: DeploymentConfig, uid: int | None, *, ok: bool, error: str | None = None,
                from_ref: str | None = None, to_ref: str | None = None, **detail) -> Outcome:
        if uid is None:
            return Outcome(d.name, "updated" if ok else "failed", from_ref, to_ref, error or "")
        rec = self.history.finish(uid, ok=ok, error=error, **detail)
        (log.info if ok else log.warning)("update.finished", deployment=d.name, to_ref=rec.to_ref,
                                          result=rec.status, error=error)
        self.bus.publish(UpdateFinished(deployment=d.name, image=d.image, ok=ok, to_ref=rec.to_ref,
                                        from_ref=rec.from_ref, update_id=uid, policy=rec.policy,
                                        reason=rec.reason, approved_by=rec.approved_by, error=error))
        return Outcome(d.name, "updated" if ok else "failed", rec.from_ref, rec.to_ref, error or "", uid)
