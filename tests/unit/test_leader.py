"""Leader election on a real PostgreSQL store: one leader among replicas, the followers' jobs
idle, work asked of a follower (a webhook) is done once by the leader, and a leader whose
connection ends is replaced."""

from __future__ import annotations

import threading
import time

import pytest

from poller.config import parse_config
from poller.runtime import build_pipeline
from poller.scheduler import Scheduler
from tests.fixtures.services import wait_until

INTERVAL = 0.5


def _replica(pg_url: str, tmp_path, calls: list, name: str) -> Scheduler:
    cfg = parse_config({
        "registry": {"url": "127.0.0.1:5000", "insecure": True},
        "store": {"url": pg_url, "leader_interval": INTERVAL},
        "state_dir": str(tmp_path / name), "api": {"listen": None}, "sources": []}, file="t.yaml")
    lock = threading.Lock()

    def job() -> None:
        with lock:
            calls.append(name)
    return Scheduler(cfg, build_pipeline(cfg), extra_jobs=[("work", 3600.0, job)])


@pytest.fixture
def replicas(pg_url, tmp_path):
    calls: list[str] = []
    made = [_replica(pg_url, tmp_path, calls, f"r{i}") for i in range(3)]
    for s in made:
        s.start()
    yield made, calls
    for s in made:
        s.stop(grace=1)


def test_exactly_one_replica_leads_and_only_it_runs_scheduled_work(replicas):
    made, calls = replicas
    wait_until(lambda: sum(s.is_leader() for s in made) == 1, timeout=20, what="one leader")
    [leader] = [i for i, s in enumerate(made) if s.is_leader()]
    wait_until(lambda: calls, what="the leader's first run")
    assert set(calls) == {f"r{leader}"}


def test_a_trigger_on_a_follower_is_run_once_by_the_leader(replicas):
    made, calls = replicas
    wait_until(lambda: sum(s.is_leader() for s in made) == 1, timeout=20, what="one leader")
    [leader] = [s for s in made if s.is_leader()]
    wait_until(lambda: calls, what="the leader's first run")
    before = len(calls)
    follower = next(s for s in made if not s.is_leader())
    assert follower.trigger("work")
    wait_until(lambda: len(calls) == before + 1, timeout=10, what="the leader ran the trigger")
    wait_until(lambda: not leader.pipeline.store.execute(
        "SELECT id FROM leader_triggers").fetchall(), what="the trigger consumed")
    assert len(calls) == before + 1 and set(calls) == {calls[0]}


def test_a_leader_that_stops_is_replaced_within_two_intervals(replicas):
    made, _ = replicas
    wait_until(lambda: sum(s.is_leader() for s in made) == 1, timeout=20, what="one leader")
    [leader] = [s for s in made if s.is_leader()]
    started = time.monotonic()
    leader.leader.stop()  # its session ends: the lock goes with it
    wait_until(lambda: sum(s.is_leader() for s in made if s is not leader) == 1, timeout=10,
               interval=0.01, what="a new leader")
    assert time.monotonic() - started < 2 * INTERVAL + 0.5


def test_a_stopped_replica_leaves_no_thread_of_its_own_running(pg_url, tmp_path):
    # Threads left running (the build queue's connection pool, the leader's connection, the
    # claims heartbeat) are still reading or logging while the interpreter tears down.
    before = set(threading.enumerate())
    replica = _replica(pg_url, tmp_path, [], "r0")
    replica.start()
    wait_until(replica.is_leader, timeout=20, what="the replica leads")
    replica.stop(grace=1)

    def ours() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t not in before)
    try:
        wait_until(lambda: not ours(), timeout=10, what="the replica's threads to end")
    except AssertionError:
        assert ours() == []
