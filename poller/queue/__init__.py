"""Builds as jobs on a PostgreSQL queue (procrastinate), when the store is PostgreSQL.

The poller that decides a build enqueues it; ``poller worker`` processes run it on any
machine with a Docker engine. The queue's locks make it at most one build per
(image, ref, commit) across every process: a job's ``queueing_lock`` refuses a second
waiting job for the same commit, a job waiting or being built keeps the poller from
queueing another, and its ``lock`` keeps a second one from starting while one runs.
Workers send heartbeats; a worker that stops beating (killed mid-build) has its job put
back by whichever worker sweeps next (``lease`` seconds later), however many times its
workers die, or closed in favour of a job for the same commit queued meanwhile; a worker
killed after its push has its build recorded succeeded by the retry, which finds the
commit in the registry. A build that fails (a broken commit, the worker's engine gone)
fails that job only, recorded in the store like an in-process build.

With SQLite there is no queue: builds run in ``poller run`` as before.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from poller.logs import get_logger
from poller.procs import pid_alive

if TYPE_CHECKING:
    from procrastinate import App

    from poller.builds.builder import BuildPlan
    from poller.pipeline import Action, Pipeline
    from poller.store import Store

log = get_logger("queue")

TASK = "slipway.build"
#: Serialises stalled-job sweeps across workers (a PostgreSQL advisory lock key).
_SWEEP_LOCK = 0x51_1F_0003


def job_key(plan: BuildPlan) -> str:
    return f"{plan.image}|{plan.ref}|{plan.sha}"


def _conninfo(url: str) -> str:
    import sqlalchemy as sa

    u = sa.make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


def make_app(url: str) -> App:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_conninfo(url)))
    app.task(name=TASK, pass_context=True)(_run_job)
    return app


def _run_job(context: Any, *, plan: dict) -> None:
    """The job: build ``plan`` with this worker's pipeline (claim, history, push)."""
    from poller.builds.builder import BuildPlan
    from poller.pipeline import Action

    pipeline: Pipeline = context.additional_context["pipeline"]
    bp = BuildPlan(**{**plan, "tags": tuple(plan["tags"])})
    act = Action(source=bp.source, ref=bp.ref, sha=bp.sha, kind=bp.kind, tags=list(bp.tags),
                 action="build", status="pending")
    result = pipeline.build_claimed(bp, act)
    log.info("job.done", job=context.job.id, image=bp.image, ref=bp.ref, status=result.status,
             action=result.action)
    if result.status == "failed":
        raise JobFailed(result.error or "build failed")


class JobFailed(Exception):
    """The build ran and failed (recorded in the store); the job is marked failed."""


class BuildQueue:
    """The poller's side: enqueue a build instead of running it here."""

    def __init__(self, url: str, *, queue: str = "builds"):
        self.queue = queue
        self.app = make_app(url)
        self.app.open()
        self._lock = threading.Lock()

    def enqueue(self, plan: BuildPlan, act: Action) -> Action:
        from procrastinate.exceptions import AlreadyEnqueued

        key = job_key(plan)
        try:
            with self._lock:  # one sync connection; defers are quick
                # A job of this commit waiting or being built keeps the decision from queueing
                # a second one that would only wait for it. Two pollers deciding at once are
                # kept to one waiting job by the ``queueing_lock``; a job queued, taken and
                # started between this look and the defer (milliseconds) leaves a job that finds
                # the commit pushed when its turn comes (no second build, no second push).
                live = [j.status for j in self.app.job_manager.list_jobs(task=TASK, lock=key)
                        if j.status in ("todo", "doing")]
                if live:
                    act.action, act.status = "in-flight", "pending"
                    act.error = "being built by a worker" if "doing" in live else "already queued"
                    return act
                job_id = self.app.configure_task(TASK, queue=self.queue, lock=key,
                                                 queueing_lock=key).defer(plan=asdict(plan))
        except AlreadyEnqueued:
            act.action, act.status = "in-flight", "pending"
            act.error = "already queued"
            return act
        log.info("build.enqueued", image=plan.image, ref=plan.ref, sha=plan.sha[:12], job=job_id)
        act.action, act.status = "build", "pending"
        act.error = None
        return act

    def close(self) -> None:
        self.app.close()


def _worker_gone(host: str, pid: int) -> bool:
    """Whether the process of a stalled job is gone: on this host its pid says so; on another,
    the queue's lease (it sent no heartbeat for that long) is the word."""
    return host != socket.gethostname() or not pid_alive(pid)


def sweep_stalled(store: Store, *, lease: float) -> dict[str, int]:
    """Put back the build jobs of workers silent for ``lease`` seconds.

    A lost worker is no fault of the build, so a stalled job is put back however many times its
    workers died (its ``attempts`` count them). If a poller meanwhile queued the same commit again
    (the stalled job no longer holds the ``queueing_lock``, only the ``lock``, which keeps that new
    job from starting), the stalled job is superseded: it is closed, releasing the lock, and the
    waiting job builds the commit. Either way exactly one job goes on to build it.

    In the same transaction the stalled job's build, if it started one, is marked
    ``interrupted`` and its build claim released when its worker is gone (by its pid on this
    host; on another host the claim's own lease is longer than the queue's, and would otherwise
    hold the retry back until it lapsed).

    One sweep at a time across processes (an advisory lock), reading the jobs fresh inside it,
    so a job another sweeper already put back (and a live worker took) is never touched.
    """
    from procrastinate import sql
    from sqlalchemy.exc import IntegrityError

    done = {"retried": 0, "superseded": 0}
    with store.transaction(lock=_SWEEP_LOCK) as tx:
        rows = tx.conn.exec_driver_sql(
            sql.queries["select_stalled_jobs_by_heartbeat"],
            {"queue": None, "task_name": TASK, "seconds_since_heartbeat": lease}).mappings().all()
        for row in rows:
            # Its worker is gone: its build (if it started one) is over, and its build claim,
            # judged by a lease longer than the queue's on another host, must not hold the retry.
            if row["lock"]:
                image, ref, sha = row["lock"].rsplit("|", 2)
                store.release_lost_build(tx, image=image, ref=ref, sha=sha, gone=_worker_gone)
            try:
                with tx.conn.begin_nested():  # a clash rolls back this job's retry only
                    tx.conn.exec_driver_sql(sql.queries["retry_job"], {
                        "job_id": row["id"], "retry_at": None, "new_priority": None,
                        "new_queue_name": None, "new_lock": None})
            except IntegrityError:  # the same commit is queued again: that job builds it
                tx.conn.exec_driver_sql(sql.queries["finish_job"], {
                    "job_id": row["id"], "status": "failed", "delete_job": False})
                done["superseded"] += 1
                log.warning("job.stalled_superseded", job=row["id"], lock=row["lock"])
            else:
                done["retried"] += 1
                log.warning("job.stalled_retried", job=row["id"], lock=row["lock"],
                            attempts=row["attempts"] + 1)
    return done


def run_worker(pipeline: Pipeline, url: str, *, queues: list[str], concurrency: int,
               lease: float, stop: threading.Event | None = None) -> None:
    """Process build jobs until stopped (SIGINT/SIGTERM); sweep stalled jobs meanwhile."""
    import psycopg
    from procrastinate.exceptions import ConnectorException
    from sqlalchemy.exc import SQLAlchemyError

    stop = stop or threading.Event()

    def sweeper() -> None:
        while not stop.wait(lease / 3):
            try:
                sweep_stalled(pipeline.store, lease=lease)
            except SQLAlchemyError as exc:  # the database is away: the next sweep tries again
                log.warning("sweep.failed", error=repr(exc))

    sweeping = threading.Thread(target=sweeper, name="queue-sweeper", daemon=True)
    sweeping.start()
    app = make_app(url)

    async def main() -> None:
        async with app.open_async():
            await app.run_worker_async(
                queues=queues, concurrency=concurrency, wait=True,
                additional_context={"pipeline": pipeline},
                update_heartbeat_interval=max(1.0, lease / 4), stalled_worker_timeout=lease,
                delete_jobs="never")

    try:
        while True:
            try:
                asyncio.run(main())
                return  # stopped by a signal
            except (ConnectorException, psycopg.OperationalError) as exc:
                # The database went away (restarted, network cut): the job it ran is left to
                # the stalled-job sweep; this worker reconnects and carries on.
                log.warning("worker.database_lost", error=" ".join(str(exc).split())[:200])
                if stop.wait(min(5.0, lease / 3)):
                    return
    finally:
        stop.set()
        sweeping.join(10)  # not left sweeping (or logging) while the interpreter exits
