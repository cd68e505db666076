"""The reconcile loop for sources: compare git with the registry, build the difference.

Every cycle reads the desired state (branch head and tags, from the source) and the actual
state (tags, digests and revision labels, from the registry), and acts on the difference:

* ``staging`` whose revision label is the branch head, or a release tag already in the
  registry: nothing to do.
* ``sha-<head>`` already pushed but ``staging`` elsewhere (a crash between the two pushes):
  re-tag in the registry, no rebuild, nothing pushed twice.
* otherwise: build and push, at most one build per (image, ref) at a time, under a global
  concurrency limit, with back-off for a commit whose build keeps failing (derived from
  the store's history, so it survives restarts).

Nothing here is remembered as truth. The only memory is an optimisation: when a source's
refs are exactly what they were when everything was last found in sync, the registry is
not asked again until ``poll.resync`` seconds have passed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from poller.builds.builder import LABEL_REVISION, Builder, BuildPlan
from poller.builds.plans import STAGING_TAG, desired_plans, sha_tag
from poller.config import Config, SourceConfig
from poller.errors import BuildError, NotFound, SlipwayError, UpstreamError
from poller.events import (
    BuildFinished,
    BuildStarted,
    EventBus,
    ImageRetagged,
    SourceError,
    SourcePolled,
)
from poller.http import backoff_delay
from poller.logs import correlation, get_logger
from poller.procs import pid_alive
from poller.registry.client import RegistryClient
from poller.rollback import release_hold, staging_hold
from poller.sources.base import RefSnapshot, Source
from poller.store import Store

log = get_logger(__name__)


@dataclass
class Action:
    """What a cycle decided (and, once done, what happened) for one plan."""

    source: str
    ref: str
    sha: str
    kind: str
    tags: list[str]
    action: str              # up-to-date | build | retag | backoff | in-flight | deferred | held
    status: str = "done"     # done | pending | succeeded | failed
    build_id: int | None = None
    digest: str | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SourceReport:
    source: str
    head: str | None = None
    skipped_registry: bool = False
    error: str | None = None
    retry_after: float | None = None
    actions: list[Action] = field(default_factory=list)


#: How long a build claim lasts without renewal; a running build renews it every third of this.
CLAIM_TTL = 60.0


def _holder_alive(host: str, pid: int) -> bool:
    """Whether the process holding a build claim still runs (another host's: trust its lease)."""
    return host != socket.gethostname() or pid == os.getpid() or pid_alive(pid)


def _clip(text: str, limit: int = 500) -> str:
    """An error message short enough for a log line and the store, whatever an upstream sent."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Backoff:
    """Per-key exponential back-off that honours an upstream's ``Retry-After``."""

    def __init__(self, *, initial: float = 5.0, maximum: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.initial, self.maximum, self.clock = initial, maximum, clock
        self._state: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def failed(self, key: str, retry_after: float | None = None) -> float:
        with self._lock:
            n = self._state.get(key, (0, 0.0))[0] + 1
            delay = backoff_delay(n, initial=self.initial, maximum=self.maximum, retry_after=retry_after)
            self._state[key] = (n, self.clock() + delay)
            return delay

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)

    def wait_left(self, key: str) -> float:
        with self._lock:
            if key not in self._state:
                return 0.0
            return max(0.0, self._state[key][1] - self.clock())


class Pipeline:
    def __init__(self, cfg: Config, *, store: Store, registry: RegistryClient, builder: Builder,
                 sources: dict[str, Source], on_build_log: Callable[[BuildPlan, str], None] | None = None,
                 bus: EventBus | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.builder = builder
        self.sources = sources
        self.clock = clock
        self.monotonic = monotonic
        self.on_build_log = on_build_log
        self.backoff = Backoff(maximum=cfg.poll.backoff_max, clock=monotonic)
        self._executor = ThreadPoolExecutor(max_workers=cfg.build.concurrency,
                                            thread_name_prefix="build")
        self._inflight: dict[tuple[str, str], Future] = {}
        self._inflight_lock = threading.Lock()
        #: One reconcile of a source at a time (the scheduler, a webhook and the API may all ask).
        self._source_locks: dict[str, threading.Lock] = {name: threading.Lock() for name in sources}
        self._converged: dict[str, tuple[tuple, float]] = {}
        self._last_snapshot: dict[str, RefSnapshot] = {}
        self._shutting_down = threading.Event()
        # Builds are claimed in the store, so two processes on one store never build the same
        # (image, ref) at once; a killed holder's claim is taken over (dead pid, lapsed lease).
        self._host = socket.gethostname()
        self._holder = f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._heartbeat: threading.Thread | None = None
        #: Where this pipeline publishes SourcePolled, SourceError, BuildStarted, BuildFinished
        #: and ImageRetagged (poller/events.py). Metrics and notifications subscribe there.
        self.bus = bus if bus is not None else EventBus()
        #: With a PostgreSQL store, builds go to the queue (``poller.queue``) instead of the
        #: executor here: ``enqueue(plan, action)`` returns the action as decided.
        self.enqueue: Callable[[BuildPlan, Action], Action] | None = None
        #: Closed by :meth:`shutdown`: what the pipeline was given to own (the queue's connections).
        self._closers: list[Callable[[], None]] = []

    # -- one source -------------------------------------------------------------------
    def reconcile_source(self, name: str, *, force: bool = False) -> SourceReport:
        """One pass over one source. Builds are submitted, not waited for.

        Two reconciles of one source never overlap: a second caller waits for the first.
        """
        with self._source_locks.setdefault(name, threading.Lock()):
            return self._reconcile_source(name, force=force)

    def _reconcile_source(self, name: str, *, force: bool) -> SourceReport:
        report = SourceReport(source=name)
        wait = self.backoff.wait_left(f"source:{name}")
        if wait > 0 and not force:
            report.error = f"backing off for {wait:.0f}s after upstream errors"
            report.retry_after = wait
            return report
        cfg = self.cfg.source(name)
        try:
            snap = self.sources[name].poll()
            report.head = snap.head
            self._last_snapshot[name] = snap
            fingerprint = snap.fingerprint()
            converged = self._converged.get(name)
            resync = self.cfg.poll.resync
            if (not force and resync > 0 and converged is not None and converged[0] == fingerprint
                    and self.monotonic() - converged[1] < resync):
                report.skipped_registry = True
            else:
                report.actions = self._decide(cfg, snap)
                if all(a.action in ("up-to-date", "held") for a in report.actions):
                    self._converged[name] = (fingerprint, self.monotonic())
                else:
                    self._converged.pop(name, None)
            self.store.record_poll(name, head=snap.head, tags=snap.tags)
            self.backoff.succeeded(f"source:{name}")
            self.bus.publish(SourcePolled(source=name, unchanged=snap.unchanged,
                                          skipped_registry=report.skipped_registry))
        except UpstreamError as exc:
            delay = self.backoff.failed(f"source:{name}", exc.retry_after)
            report.error, report.retry_after = str(exc), delay
            self.store.record_poll(name, error=str(exc))
            log.warning("source.upstream_error", source=name, error=str(exc), retry_in=round(delay, 1))
            self.bus.publish(SourceError(source=name, error=str(exc), temporary=True))
        except SlipwayError as exc:
            delay = self.backoff.failed(f"source:{name}")
            report.error, report.retry_after = str(exc), delay
            self.store.record_poll(name, error=str(exc))
            log.error("source.error", source=name, error=str(exc), retry_in=round(delay, 1))
            self.bus.publish(SourceError(source=name, error=str(exc), temporary=False))
        except Exception as exc:  # a malformed answer or a bug: this source's failure, not the pass's
            delay = self.backoff.failed(f"source:{name}")
            message = _clip(f"internal error: {type(exc).__name__}: {exc}")
            report.error, report.retry_after = message, delay
            self.store.record_poll(name, error=message)
            log.error("source.crashed", source=name, error=message, retry_in=round(delay, 1),
                      exc_info=True)
            self.bus.publish(SourceError(source=name, error=message, temporary=False))
        return report

    def _decide(self, cfg: SourceConfig, snap: RefSnapshot) -> list[Action]:
        plans = desired_plans(cfg, snap)
        repo = cfg.image_repository
        actions: list[Action] = []
        existing: set[str] | None = None
        started = 0
        for plan in plans:
            act = Action(source=cfg.name, ref=plan.ref, sha=plan.sha, kind=plan.kind,
                         tags=list(plan.tags), action="up-to-date")
            if self._in_flight(plan.key):
                # A build of this ref is still pushing: the registry is half-way (sha-<head>
                # pushed, ``staging`` not yet), so reading it now would re-tag what the build
                # is about to push. Decide again once the build has finished.
                act.action, act.status = "in-flight", "pending"
                actions.append(act)
                continue
            if plan.kind == "staging":
                hold = staging_hold(self.store, cfg.name)
                if hold is not None and hold["head"] in (None, plan.sha):
                    # rolled back (poller rollback --env staging): held until the next merge
                    act.action, act.digest = "held", hold["digest"]
                    actions.append(act)
                    continue
                if hold is not None:
                    release_hold(self.store, cfg.name, by="pipeline",
                                 why=f"new commit {plan.sha[:12]} on {cfg.branch}")
                digest = self.registry.head_manifest(repo, STAGING_TAG)
                if digest and self.registry.labels(repo, digest).get(LABEL_REVISION) == plan.sha:
                    act.digest = digest
                    actions.append(act)
                    continue
                sha_digest = self.registry.head_manifest(repo, sha_tag(plan.sha))
                if sha_digest and self.registry.labels(repo, sha_digest).get(LABEL_REVISION) == plan.sha:
                    if self.store.live_claim(image=plan.image, ref=plan.ref, holder_alive=_holder_alive):
                        # Another poller process on this store is between the two pushes of its build.
                        act.action, act.status = "in-flight", "pending"
                        actions.append(act)
                        continue
                    act.action = "retag"
                    act.digest = self._retag(repo, sha_tag(plan.sha), STAGING_TAG, plan)
                    actions.append(act)
                    continue
            else:
                if existing is None:
                    existing = set(self.registry.list_tags(repo))
                if plan.tags[0] in existing:
                    actions.append(act)
                    continue
            if started >= self.cfg.build.max_per_cycle:
                # A burst of refs (or a hostile upstream) never queues unbounded work; plans are
                # newest first, and the rest are found again next cycle.
                act.action, act.status = "deferred", "pending"
                act.error = f"more than {self.cfg.build.max_per_cycle} builds wanted this cycle"
            else:
                act = self._schedule(plan, act)
                started += act.action == "build"
            actions.append(act)
        return actions

    def _retag(self, repo: str, src: str, dst: str, plan: BuildPlan) -> str:
        manifest = self.registry.get_manifest(repo, src)
        digest = self.registry.put_manifest(repo, dst, manifest)
        self.store.record_event("retag", plan.image, src=src, dst=dst, digest=digest, sha=plan.sha)
        log.info("image.retagged", image=plan.image, src=src, dst=dst, digest=digest)
        self.bus.publish(ImageRetagged(source=plan.source, image=plan.image, tag=dst, digest=digest,
                                       sha=plan.sha))
        return digest

    def _in_flight(self, key: tuple[str, str]) -> bool:
        with self._inflight_lock:
            running = self._inflight.get(key)
            return running is not None and not running.done()

    # -- builds -----------------------------------------------------------------------
    def _schedule(self, plan: BuildPlan, act: Action) -> Action:
        failures, last = self.store.failures_since_success(image=plan.image, ref=plan.ref, sha=plan.sha)
        if failures and last is not None:
            delay = backoff_delay(failures, initial=self.cfg.build.retry_initial, maximum=self.cfg.build.retry_max)
            if self.clock() < last + delay:
                act.action, act.status = "backoff", "pending"
                act.error = (f"{failures} failed build(s) of this commit; next try in "
                             f"{last + delay - self.clock():.0f}s")
                return act
        if self.enqueue is not None:
            return self.enqueue(plan, act)
        with self._inflight_lock:
            running = self._inflight.get(plan.key)
            if running is not None and not running.done():
                act.action, act.status = "in-flight", "pending"
                return act
            if self._shutting_down.is_set():
                act.action, act.status = "in-flight", "pending"
                act.error = "shutting down"
                return act
            act.action, act.status = "build", "pending"
            self._inflight[plan.key] = self._executor.submit(self._run_build, plan, act)
        return act

    def build_claimed(self, plan: BuildPlan, act: Action) -> Action:
        """Build ``plan`` here and now (a queue worker's job): claim, record, build, release."""
        return self._run_build(plan, act)

    def _run_build(self, plan: BuildPlan, act: Action) -> Action:
        try:
            other = self.store.claim_build(image=plan.image, ref=plan.ref, sha=plan.sha,
                                           holder=self._holder, host=self._host, pid=os.getpid(),
                                           ttl=CLAIM_TTL, holder_alive=_holder_alive)
        except Exception as exc:  # noqa: BLE001 - the store is busy or broken: this build waits for a later cycle
            act.status, act.error = "failed", _clip(f"could not claim the build in the store: {exc}")
            log.error("build.claim_failed", image=plan.image, ref=plan.ref, error=act.error)
            return act
        if other is not None:
            act.action, act.status = "in-flight", "pending"
            act.error = f"being built by another poller ({other['host']} pid {other['pid']})"
            return act
        self._start_heartbeat()
        try:
            pushed = self._built_meanwhile(plan)
            if pushed is not None:  # by the claim's previous holder
                act.action, act.status, act.digest = "up-to-date", "done", pushed
                self._settle_pushed(plan, act, pushed)
                return act
            build_id = self.store.start_build(source=plan.source, image=plan.image, ref=plan.ref,
                                              kind=plan.kind, sha=plan.sha, tags=list(plan.tags),
                                              pid=os.getpid())
            with correlation(f"build-{build_id}"):
                return self._run_build_inner(plan, act, build_id)
        finally:
            self.store.release_claim(image=plan.image, ref=plan.ref, holder=self._holder)

    def _built_meanwhile(self, plan: BuildPlan) -> str | None:
        """The digest of the plan's last tag if it already carries the plan's commit (pushed
        since the decision), else ``None``."""
        repo = self.cfg.source(plan.source).image_repository
        try:
            digest = self.registry.head_manifest(repo, plan.tags[-1])
            if digest and self.registry.labels(repo, digest).get(LABEL_REVISION) == plan.sha:
                return digest
        except SlipwayError:
            pass  # the build finds out what is wrong, and records it
        return None

    def _settle_pushed(self, plan: BuildPlan, act: Action, digest: str) -> None:
        """A build whose process stopped after its push, before it recorded the outcome (a
        worker killed there), is recorded as the success the registry shows, and announced."""
        build_id = self.store.settle_pushed(image=plan.image, ref=plan.ref, sha=plan.sha,
                                            digest=digest)
        if build_id is None:
            return
        act.build_id = build_id
        log.warning("build.settled_from_registry", image=plan.image, ref=plan.ref,
                    sha=plan.sha[:12], build_id=build_id, digest=digest)
        self._publish_done(plan, build_id, ok=True, digest=digest)

    def _start_heartbeat(self) -> None:
        with self._inflight_lock:
            if self._heartbeat is not None:
                return
            self._heartbeat = threading.Thread(target=self._renew_claims, name="build-claims",
                                               daemon=True)
            self._heartbeat.start()

    def _renew_claims(self) -> None:
        while not self._shutting_down.wait(CLAIM_TTL / 3):
            try:
                self.store.renew_claims(self._holder, CLAIM_TTL)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease outlives a few misses
                log.warning("claims.renew_failed", error=repr(exc))

    def _run_build_inner(self, plan: BuildPlan, act: Action, build_id: int) -> Action:
        act.build_id = build_id
        blog = log.bind(source=plan.source, image=plan.image, ref=plan.ref, build_id=build_id)
        blog.info("build.started", sha=plan.sha[:12], tags=",".join(plan.tags))
        self.bus.publish(BuildStarted(build_id=build_id, source=plan.source, image=plan.image,
                                      ref=plan.ref, kind=plan.kind, sha=plan.sha, tags=tuple(plan.tags)))
        lines: list[str] = []

        def on_log(text: str) -> None:
            lines.append(text)
            if self.on_build_log:
                self.on_build_log(plan, text)

        try:
            result = self.builder.build(plan, self.sources[plan.source], self.cfg.source(plan.source),
                                        on_log)
        except (BuildError, UpstreamError, NotFound, SlipwayError) as exc:
            # An upstream's failure (engine unreachable, registry down) is not the commit's:
            # recorded as ``upstream-error``, which puts no back-off on it; next cycle retries.
            status = "upstream-error" if isinstance(exc, UpstreamError) else "failed"
            self.store.finish_build(build_id, status=status, error=str(exc), log="".join(lines))
            act.status, act.error = "failed", str(exc)
            blog.error("build.failed", error=str(exc))
            self._publish_done(plan, build_id, ok=False, error=str(exc))
            return act
        except Exception as exc:  # noqa: BLE001 - a bug, not an upstream: record it, keep the loop alive
            self.store.finish_build(build_id, status="failed", error=f"internal error: {exc!r}",
                                    log="".join(lines))
            act.status, act.error = "failed", f"internal error: {exc!r}"
            blog.error("build.crashed", error=repr(exc), exc_info=True)
            self._publish_done(plan, build_id, ok=False, error=act.error)
            return act
        self.store.finish_build(build_id, status="succeeded", digest=result.digest, log=result.log)
        act.status, act.digest = "succeeded", result.digest
        blog.info("build.succeeded", digest=result.digest, duration=round(result.duration, 2))
        self._publish_done(plan, build_id, ok=True, digest=result.digest)
        return act

    def _publish_done(self, plan: BuildPlan, build_id: int, *, ok: bool, digest: str | None = None,
                      error: str | None = None) -> None:
        rec = self.store.get_build(build_id)
        self.bus.publish(BuildFinished(build_id=build_id, source=plan.source, image=plan.image,
                                       ref=plan.ref, kind=plan.kind, sha=plan.sha, ok=ok,
                                       tags=tuple(plan.tags), duration=rec.duration if rec else None,
                                       digest=digest, error=error))

    def wait_for_builds(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else self.monotonic() + timeout
        while True:
            with self._inflight_lock:
                pending = [f for f in self._inflight.values() if not f.done()]
            if not pending:
                return
            left = None if deadline is None else max(0.0, deadline - self.monotonic())
            pending[0].result(timeout=left)

    def running_builds(self) -> int:
        with self._inflight_lock:
            return sum(1 for f in self._inflight.values() if not f.done())

    def close_on_shutdown(self, close: Callable[[], None]) -> None:
        """Have :meth:`shutdown` call ``close`` (a part this pipeline owns, e.g. the build queue)."""
        self._closers.append(close)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop building and end every thread and connection this pipeline started: the build
        executor, the claims heartbeat and the parts given to :meth:`close_on_shutdown`."""
        self._shutting_down.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)
        if self._heartbeat is not None:
            self._heartbeat.join(5.0)  # it waits on _shutting_down: ends at once
        while self._closers:
            close = self._closers.pop()
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - shutting down: the others still close
                log.warning("pipeline.close_failed", error=repr(exc))

    # -- whole passes -----------------------------------------------------------------
    def run_once(self, names: list[str] | None = None) -> list[SourceReport]:
        """Reconcile every source (or ``names``), wait for the builds, return what happened."""
        reports = [self.reconcile_source(n, force=True) for n in (names or list(self.sources))]
        self.wait_for_builds()
        return reports
