"""The fleet state in a real etcd: slots by transaction, leases, majority, completion."""

from __future__ import annotations

import threading

import pytest

from poller.fleet import open_state, snapshot
from poller.fleet.state import ABORTED, DONE, PAUSED, RolloutError
from poller.settings.fleet import FleetConfig
from tests.fixtures.services import wait_until

pytestmark = pytest.mark.integration


def fleet_cfg(etcd, **svc) -> FleetConfig:
    return FleetConfig.model_validate({
        "etcd": {"endpoints": [etcd.url], "prefix": "/t"},
        "services": {"db": {"image": "127.0.0.1:1/db", **svc},
                     "api": {"image": "127.0.0.1:1/api", "depends_on": ["db"]}}})


def test_only_max_unavailable_machines_get_a_slot_even_when_racing(etcd):
    state = open_state(fleet_cfg(etcd, max_unavailable=2))
    lease = state.etcd.grant(30)
    barrier = threading.Barrier(8)
    won = []

    def claim(i):
        barrier.wait()
        for _ in range(20):  # a lost race is retried like an agent's next pass would
            if state.take_slot("db", f"m{i}", lease):
                won.append(i)
                return

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 2
    assert sorted(state.slots("db")) == sorted(f"m{i}" for i in won)


def test_a_dead_agents_slot_expires_with_its_lease(etcd):
    state = open_state(fleet_cfg(etcd))
    dead = state.etcd.grant(2)
    assert state.take_slot("db", "m1", dead)
    other = state.etcd.grant(30)
    assert not state.take_slot("db", "m2", other)
    wait_until(lambda: state.slots("db") == [], timeout=15, what="the dead agent's slot to expire")
    assert state.take_slot("db", "m2", other)


def test_min_available_keeps_enough_machines_up(etcd):
    state = open_state(fleet_cfg(etcd, max_unavailable=3, min_available=2))
    lease = state.etcd.grant(30)
    for m in ("m1", "m2", "m3"):
        state.register("current", "db", m, "1.0.0", lease)
    assert state.take_slot("db", "m1", lease)
    assert not state.take_slot("db", "m2", lease)


def test_views_majority_and_completion(etcd):
    state = open_state(fleet_cfg(etcd))
    lease = state.etcd.grant(30)
    for m, v in (("m1", "2.0.0"), ("m2", "2.0.0"), ("m3", "1.0.0")):
        state.register("current", "db", m, v, lease)
    assert state.majority_version("db", exclude="m3") == "2.0.0"
    state.start_rollout("api", "2.0.0")
    state.start_rollout("db", "2.0.0")
    assert [d["service"] for d in state.deploy()] == ["db", "api"]
    assert state.blocked_by("api") == ["db"]
    assert not state.finish_if_complete("db")
    state.register("current", "db", "m3", "2.0.0", lease)
    assert state.finish_if_complete("db")
    assert state.rollout("db").state == DONE
    assert state.blocked_by("api") == []
    assert [d["service"] for d in snapshot(state)["deploy"]] == ["api"]


def test_pause_resume_abort(etcd):
    state = open_state(fleet_cfg(etcd))
    with pytest.raises(RolloutError):
        state.pause("db")
    state.start_rollout("db", "2.0.0")
    assert state.pause("db").state == PAUSED
    assert state.resume("db").state == "active"
    assert state.abort("db").state == ABORTED
    assert state.deploy() == []
    with pytest.raises(RolloutError):
        state.start_rollout("nope", "1.0.0")
