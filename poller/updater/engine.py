"""Per deployment: read what runs, let the policy decide, ask a person when the rule says
so, honour pins, apply, and audit-record every update.

One cycle observes each image once (:class:`~poller.updater.watcher.ImageWatcher`), then
checks the deployments concurrently on a bounded worker pool (``updates.workers``; at most
``updates.cluster_concurrency`` at once per cluster or Docker engine; one in flight per
deployment). The running version is read from the target every time (for Kubernetes from
the list+watch cache), never remembered: the store only holds history, pins and approvals.

Waiting for health never holds a worker: a patched Kubernetes workload, a replaced Docker
container or an upgraded Helm release (any :class:`~poller.targets.base.Watched` target) is
put on the ``pending`` list and its health is judged on later cycles (Kubernetes: from the
cache; Docker: one inspect; Helm: whether ``helm upgrade --wait``, on its own thread, ended)
until its deadline (then reported once as failed, and its version is held as today). Gradual pod
rollouts run on their own rollout threads. ``cycle(settle=True)`` (the one-shot command)
returns only when what it started has finished, as a sequential cycle did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from poller.approvals import APPLIED, APPROVED, PENDING, ApprovalQueue
from poller.errors import Conflict, SlipwayError, UpstreamError
from poller.events import ApprovalRequested, EventBus, UpdateFinished
from poller.logs import get_logger
from poller.policy.base import Move, Offer, Policy, Running
from poller.policy.factory import make_policy
from poller.rollout.control import RolloutControl
from poller.settings.updates import DeploymentConfig, UpdatesConfig
from poller.targets.base import ImageRef, TargetError
from poller.updater.history import UpdateHistory

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


@dataclass
class _Pending:
    """An applied target whose rollout health is judged on later cycles."""

    t: _Tracked
    uid: int | None
    from_ref: str | None
    to_ref: str
    generation: int | None
    deadline: float
    applied: dict
    note: str = ""   # what else the check that applied it said (a major waiting for a person)


@dataclass
class _Snapshot:
    """What a cycle reads from the store once for every deployment (not once per deployment)."""

    pins: dict[str, tuple[str, str]]
    skip: dict[str, set[str]]       # deployment -> versions a person rejected (or let expire)
    pending: dict[str, set[str]]    # deployment -> versions waiting for a person


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
        self.pool = ThreadPoolExecutor(max_workers=getattr(updates, "workers", 8),
                                       thread_name_prefix="update")
        self.pending: dict[str, _Pending] = {}
        self._rollouts: dict[str, Future] = {}     # gradual rollouts in flight, by deployment
        self._limits: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._settling = True

    # -- one cycle ---------------------------------------------------------------------------
    def cycle(self, *, settle: bool = True) -> list[Outcome]:
        """One pass. ``settle=False`` (the periodic job) never waits for a rollout: what is
        still rolling is reported ``rolling`` and judged again next cycle."""
        self._settling = settle
        retry = self.history.retry_times()
        offers = dict(zip(self.watchers, self.pool.map(
            lambda w: w.observe(retry_at=retry.get(w.image), record=False), self.watchers.values())))
        self.history.watched_ok([self.watchers[image].checked(o) for image, o in offers.items()
                                 if o.offer is not None])
        outcomes = self._rollout_outcomes(settle)
        outcomes += self._close_aborted()
        outcomes += self._health()
        busy = {o.deployment for o in outcomes} | set(self.pending) | set(self._rollouts)
        snap = self._snapshot()
        jobs = [(t, self.pool.submit(self._check_one, t, offers[t.cfg.image].offer, snap))
                for t in self.tracked if t.cfg.name not in busy]
        outcomes += [f.result() for _, f in jobs]
        if settle:
            outcomes = self._settle(outcomes)
        return outcomes

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.targets, "close", None)
        if close is not None:
            close()

    def _limit(self, t: _Tracked) -> threading.BoundedSemaphore:
        cluster = getattr(self.targets, "cluster", None)
        key = cluster(t.cfg) if cluster is not None else ""
        with self._lock:
            if key not in self._limits:
                self._limits[key] = threading.BoundedSemaphore(getattr(self.updates, "cluster_concurrency", 4))
            return self._limits[key]

    def _check_one(self, t: _Tracked, offer: Offer | None, snap: _Snapshot | None = None) -> Outcome:
        for attempt in range(3):
            try:
                with self._limit(t):
                    return self.check(t, offer, snap)
            except Conflict as exc:   # changed under us: decide again from fresh state
                log.info("update.conflict", deployment=t.cfg.name, attempt=attempt + 1, error=str(exc))
                snap = None
                try:
                    self._target(t).fetch()
                except SlipwayError as fexc:
                    return Outcome(t.cfg.name, "failed", detail=str(fexc))
            except SlipwayError as exc:
                log.warning("update.check_failed", deployment=t.cfg.name, error=str(exc))
                return Outcome(t.cfg.name, "failed", detail=str(exc))
            except Exception as exc:  # one broken target must not stop the others
                log.error("update.check_crashed", deployment=t.cfg.name, error=repr(exc), exc_info=True)
                return Outcome(t.cfg.name, "failed", detail=f"{type(exc).__name__}: {exc}")
        return Outcome(t.cfg.name, "failed", detail="the workload kept changing under the update; next cycle")

    def _rollout_outcomes(self, settle: bool) -> list[Outcome]:
        """Gradual rollouts: run inline when settling, else each on its own thread (never a
        worker of the pool), collected on the cycle after they end."""
        out = []
        with self._lock:
            rollouts = list(self._rollouts.items())
        for name, fut in rollouts:
            if fut.done():
                with self._lock:
                    del self._rollouts[name]
                try:
                    out.append(fut.result())
                except Exception as exc:  # noqa: BLE001 - a rollout thread's failure is that deployment's outcome
                    out.append(Outcome(name, "failed", detail=f"{type(exc).__name__}: {exc}"))
        for r in self.control.active():
            if r.deployment in self._rollouts or any(o.deployment == r.deployment for o in out):
                continue
            if r.state != "running":
                out.append(Outcome(r.deployment, "rolling", to_ref=r.to_ref, detail=f"paused: {r.message or ''}"))
            elif settle:
                out.append(self.resume(r.deployment))
            else:
                self._spawn_rollout(r.deployment)
                out.append(Outcome(r.deployment, "rolling", to_ref=r.to_ref, detail="rolling out"))
        return out

    def _spawn_rollout(self, deployment: str, applied: dict | None = None) -> None:
        fut: Future = Future()
        with self._lock:
            self._rollouts[deployment] = fut
        threading.Thread(target=self._run_rollout, args=(deployment, fut, applied), daemon=True,
                         name=f"rollout-{deployment}").start()

    def _run_rollout(self, deployment: str, fut: Future, applied: dict | None) -> None:
        try:
            fut.set_result(self.resume(deployment, applied=applied))
        except BaseException as exc:  # noqa: BLE001 - handed to the cycle that collects it
            fut.set_exception(exc)

    def _health(self) -> list[Outcome]:
        """Judge each pending rollout without waiting (Kubernetes: from the cache, no API-server
        request)."""
        out = []
        for p in list(self.pending.values()):
            o = self._judge(p)
            if p.note:
                o.detail = "; ".join(x for x in (o.detail, p.note) if x)
            out.append(o)
        return out

    def _judge(self, p: _Pending) -> Outcome:
        d = p.t.cfg
        try:
            done, why = self._target(p.t).health(p.generation)
        except (TargetError, SlipwayError) as exc:
            del self.pending[d.name]
            return self._finish(d, p.uid, ok=False, error=str(exc), from_ref=p.from_ref, to_ref=p.to_ref,
                                target=p.applied)
        except Exception as exc:  # noqa: BLE001 - not judged this time (say, engine unreachable): next cycle
            log.warning("update.health_unknown", deployment=d.name, error=repr(exc))
            done, why = False, f"{type(exc).__name__}: {exc}"
        if done:
            del self.pending[d.name]
            p.applied["status"] = why
            return self._healthy(p)
        if time.monotonic() >= p.deadline:   # reported once; the version is then held
            del self.pending[d.name]
            target = self._target(p.t)
            error = f"{target.description}: not healthy after {target.timeout:.0f}s: {why}"
            try:
                target.expire()               # a Docker container: the old one comes back
            except (TargetError, SlipwayError) as exc:
                error = f"{error}; {exc}"
            return self._finish(d, p.uid, ok=False, error=error, from_ref=p.from_ref, to_ref=p.to_ref,
                                target=p.applied)
        return Outcome(d.name, "rolling", p.from_ref, p.to_ref, why, p.uid)

    def _settle(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Wait for what this cycle started (one-shot use); later outcomes replace earlier."""
        by_name = {o.deployment: o for o in outcomes}
        while self.pending or self._rollouts:
            for p in list(self.pending.values()):
                informer = getattr(self._target(p.t), "informer", None)
                if informer is not None:
                    informer.wait_for(lambda: False, 0.5)
                    break
            else:
                if self.pending:
                    time.sleep(0.5)
            for fut in list(self._rollouts.values()):
                fut.exception()
            by_name.update({o.deployment: o for o in self._health() + self._rollout_outcomes(True)})
        return list(by_name.values())

    def _target(self, t: _Tracked):
        if t.target is None:
            t.target = self.targets.target(t.cfg)
        return t.target

    def _snapshot(self) -> _Snapshot:
        skip: dict[str, set[str]] = {}
        pending: dict[str, set[str]] = {}
        for a in self.approvals.list(status=None, kind=KIND):   # expires the overdue first
            if a.status in ("rejected", "expired"):
                skip.setdefault(a.subject, set()).add(a.to_version)
            elif a.status == PENDING:
                pending.setdefault(a.subject, set()).add(a.to_version)
        return _Snapshot(pins=self.history.pins(), skip=skip, pending=pending)

    def check(self, t: _Tracked, offer: Offer | None, snap: _Snapshot | None = None) -> Outcome:
        """``snap``: the store state read once for the whole cycle (else read here)."""
        d = t.cfg
        snap = snap or self._snapshot()
        target = self._target(t)
        running = target.current()
        from_ref = running.ref if running else None
        pin = snap.pins.get(d.name) or ((d.pin, "config") if d.pin else None)
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
        out, waiting = self._decide(t, running, from_ref, offer, set(snap.skip.get(d.name, ())))
        # a request nobody answered that this cycle no longer proposes (a newer major came, or
        # the deployment got there another way) leaves the pending list; a request made in this
        # check is in ``waiting``, so with none pending before there is nothing to supersede
        if snap.pending.get(d.name, set()) - waiting:
            self.approvals.supersede(kind=KIND, subject=d.name, keep=waiting)
        return out

    def _decide(self, t: _Tracked, running: ImageRef | None, from_ref: str | None,
                offer: Offer, skip: set[str]) -> tuple[Outcome, set[str]]:
        """The outcome, and the refs now waiting for a person (``skip``: refs a person refused)."""
        d = t.cfg
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
            if within.action == "rolling" and d.name in self.pending:   # said again once it ends
                self.pending[d.name].note = waits
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
        watch = d.rollout is None and hasattr(target, "health")
        try:
            applied = target.apply(new, wait=False) if watch else target.apply(new)
        except Conflict:
            self.history.abandon(uid, reason="the target changed since it was read; deciding again")
            raise
        except (TargetError, SlipwayError) as exc:
            return self._finish(d, uid, ok=False, error=str(exc), from_ref=from_ref, to_ref=move.ref)
        if watch:
            self.pending[d.name] = _Pending(t, uid, from_ref, move.ref, applied.detail.get("generation"),
                                            time.monotonic() + target.timeout, applied.detail)
            return Outcome(d.name, "rolling", from_ref, move.ref, "patched; waiting for health", uid)
        if d.rollout is not None:
            for old in self.control.active(d.name):
                if old.to_ref != move.ref:
                    self.control.set_state(old.id, "aborted", message=f"superseded by {move.ref}")
                    self._finish_superseded(d.name, old.to_ref, move.ref)
            self.control.start(d.name, move.ref, str(new))
            if not self._settling:   # the rollout's health gates never hold a worker of the pool
                self._spawn_rollout(d.name, applied.detail)
                return Outcome(d.name, "rolling", from_ref, move.ref, "rolling out", uid)
            return self.resume(d.name, applied=applied.detail)
        reload = self._reload_servers(t) if d.reload is not None else None
        if reload and any(not r["ok"] for r in reload):
            return self._finish(d, uid, ok=False, error="reload failed on "
                                + ", ".join(r["server"] for r in reload if not r["ok"]),
                                from_ref=from_ref, to_ref=move.ref, target=applied.detail, reload=reload)
        return self._finish(d, uid, ok=True, from_ref=from_ref, to_ref=move.ref, target=applied.detail,
                            reload=reload)

    def _healthy(self, p: _Pending) -> Outcome:
        d = p.t.cfg
        reload = self._reload_servers(p.t) if d.reload is not None else None
        if reload and any(not r["ok"] for r in reload):
            return self._finish(d, p.uid, ok=False, error="reload failed on "
                                + ", ".join(r["server"] for r in reload if not r["ok"]),
                                from_ref=p.from_ref, to_ref=p.to_ref, target=p.applied, reload=reload)
        return self._finish(d, p.uid, ok=True, from_ref=p.from_ref, to_ref=p.to_ref, target=p.applied,
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
        recent = self.control.recent(20)
        for d in {t.cfg.name: t.cfg for t in self.tracked}.values():
            for rec in recent:
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
