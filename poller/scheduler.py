"""``poller run``: every source (and chart repository) reconciled on its own interval.

APScheduler runs one job per watched thing, with jitter so a thousand sources don't poll
in the same second, never two runs of the same job at once (``max_instances=1``) and
missed runs coalesced. SIGTERM/SIGINT stop new work, let running builds finish (up to a
grace period), and exit; a build cut off by a hard kill is marked ``interrupted`` at the
next start and, since the registry still lacks its image, built again.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor as APSThreadPool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from poller.config import Config
from poller.logs import get_logger
from poller.pipeline import Pipeline

log = get_logger(__name__)


class Scheduler:
    def __init__(self, cfg: Config, pipeline: Pipeline,
                 extra_jobs: list[tuple[str, float, Callable[[], object]]] | None = None):
        self.cfg = cfg
        self.pipeline = pipeline
        self.extra_jobs = extra_jobs or []
        self._stop = threading.Event()
        self._running: set[str] = set()
        self._rerun: set[str] = set()
        self._flags = threading.Lock()
        self._aps = BackgroundScheduler(
            executors={"default": APSThreadPool(max_workers=8)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        #: With a PostgreSQL store, several replicas run; only the leader's jobs do work
        #: (poller.leader). With SQLite there is no election: this process always leads.
        self.leader = None
        if getattr(pipeline.store, "pg", False):
            from poller.leader import Leader

            self.leader = Leader(cfg.store_target, interval=cfg.store.leader_interval,
                                 on_change=self._leadership_changed)

    def is_leader(self) -> bool:
        return self.leader is None or self.leader.is_leader()

    def _leadership_changed(self, leading: bool) -> None:
        if leading and not self._stop.is_set():  # take over at once, not at the next interval
            import datetime as dt

            for job in self._aps.get_jobs():
                job.modify(next_run_time=dt.datetime.now(dt.UTC))

    def _consume_triggers(self) -> None:
        """The leader runs the work other replicas were asked for (their webhooks), once."""
        rows = self.pipeline.store.execute("DELETE FROM leader_triggers RETURNING job_id").fetchall()
        for job_id in dict.fromkeys(r["job_id"] for r in rows):
            self._trigger_here(job_id)

    def _add(self, job_id: str, interval: float, fn: Callable[[], object]) -> None:
        import datetime as dt

        self._aps.add_job(self._guard(job_id, fn), IntervalTrigger(
            seconds=interval, jitter=max(0.0, interval * self.cfg.poll.jitter) or None),
            id=job_id, name=job_id, next_run_time=dt.datetime.now(dt.UTC))

    def _guard(self, job_id: str, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            if not self.is_leader():  # a follower: the leader does the scheduled work
                return
            with self._flags:
                self._running.add(job_id)
            try:
                while True:
                    try:
                        fn()
                    except Exception as exc:  # a job must never take the scheduler down
                        log.error("job.crashed", job=job_id, error=repr(exc), exc_info=True)
                    with self._flags:
                        # A trigger that arrived while this run was under way runs it once more.
                        if job_id in self._rerun and not self._stop.is_set():
                            self._rerun.discard(job_id)
                            continue
                        self._running.discard(job_id)
                        return
            except BaseException:
                with self._flags:
                    self._running.discard(job_id)
                raise
        return run

    def start(self) -> None:
        for s in self.cfg.sources:
            interval = s.interval or self.cfg.poll.interval
            self._add(f"source:{s.name}", interval, functools.partial(self.pipeline.reconcile_source, s.name))
        for job_id, interval, fn in self.extra_jobs:
            self._add(job_id, interval, fn)
        if self.leader is not None:
            self._add("leader:triggers", 1.0, self._consume_triggers)
        self._aps.start()
        if self.leader is not None:
            self.leader.start()
        log.info("scheduler.started", sources=len(self.cfg.sources), jobs=len(self._aps.get_jobs()))

    def trigger(self, job_id: str) -> bool:
        """Run a job now (webhooks use this); polling stays the safety net. On a follower the
        request is written to the store, and the leader runs it once."""
        if not self.is_leader():
            if self._aps.get_job(job_id) is None:
                return False
            self.pipeline.store.execute("INSERT INTO leader_triggers (job_id, at) VALUES (?, ?)",
                                        (job_id, time.time()))
            return True
        return self._trigger_here(job_id)

    def _trigger_here(self, job_id: str) -> bool:
        job = self._aps.get_job(job_id)
        if job is None:
            return False
        import datetime as dt

        with self._flags:
            if job_id in self._running:
                self._rerun.add(job_id)
                return True
        job.modify(next_run_time=dt.datetime.now(dt.UTC))
        return True

    def stop(self, grace: float = 300.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self.leader is not None:
            self.leader.stop()
        log.info("scheduler.stopping", running_builds=self.pipeline.running_builds())
        self._aps.shutdown(wait=True)
        try:
            self.pipeline.wait_for_builds(timeout=grace)
        except Exception:  # noqa: BLE001 - a boundary: logged, never raised further
            log.warning("scheduler.grace_expired", grace=grace)
        self.pipeline.shutdown(wait=False)
        log.info("scheduler.stopped")

    def run_forever(self, grace: float = 300.0) -> None:
        def _signal(signum, frame):
            log.info("signal.received", signal=signal.Signals(signum).name)
            self._stop_requested.set()

        self._stop_requested = threading.Event()
        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        self._stop_requested.wait()
        self.stop(grace)
