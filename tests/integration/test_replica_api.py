"""A decision taken through the HTTP API of a follower ``poller run`` (an approval that lets a
rollout go on) reaches the leader, which runs the work at once, exactly once; the follower
runs none of it."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import requests
import yaml

from poller.approvals import ApprovalQueue
from poller.store import Store
from poller.updater.history import UpdateHistory
from tests.fixtures.services import free_port, wait_until
from tests.integration.test_build_queue import _stop
from tests.integration.test_replicas import LEADER_INTERVAL, _leading, _replica
from tests.integration.updater_support import build_local_image, push_base, retag

pytestmark = pytest.mark.integration

REPO = "replica-game"
TOKEN = "t0ken"


def _events(log: Path, event: str) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == event:
            out.append(rec)
    return out


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/api/v1/approvals", timeout=5).ok
    except requests.ConnectionError:
        return False


def test_an_approval_given_on_a_follower_is_applied_at_once_by_the_leader_only(
        tmp_path, registry, docker_client, docker_host, pg_url):
    build_local_image(docker_client, tmp_path)
    push_base(docker_client, registry, REPO, "1.0.0")
    name = f"slipway-replica-{secrets.token_hex(3)}"
    docker_client.containers.run(f"{registry.addr}/{REPO}:1.0.0", name=name, detach=True)
    retag(registry, REPO, "1.0.0", "2.0.0", label="2.0.0")  # a major: it waits for a person
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"replica-{i}.log" for i in range(2)]
    replicas = []
    try:
        for port, log in zip(ports, logs):
            cfg = tmp_path / f"slipway-{port}.yaml"
            cfg.write_text(yaml.safe_dump({
                "registry": {"url": registry.addr, "insecure": True},
                "store": {"url": pg_url, "leader_interval": LEADER_INTERVAL},
                "api": {"listen": f"127.0.0.1:{port}", "token": TOKEN},
                "docker": {"base_url": docker_host},
                # Checks an hour apart: only a trigger makes the approved update happen now.
                "updates": {"interval": 3600, "deployments": [{
                    "name": "prod", "image": f"{registry.addr}/{REPO}", "policy": "major",
                    "approval": "major", "target": {"docker": {"container": name}}}]}}))
            replicas.append(_replica(cfg, docker_host, log))
        wait_until(lambda: sum(map(_leading, logs)) == 1, timeout=90, what="one leader")
        [leader] = [i for i, log in enumerate(logs) if _leading(log)]
        follower = 1 - leader
        store = Store(pg_url)
        [pending] = wait_until(lambda: ApprovalQueue(store).list(), timeout=90,
                               what="the leader's first check asking for approval")
        assert (pending.subject, pending.to_version) == ("prod", "2.0.0")

        wait_until(lambda: _answers(ports[follower]), timeout=90, what="the follower's API up")
        resp = requests.post(
            f"http://127.0.0.1:{ports[follower]}/api/v1/approvals/{pending.id}/approve",
            json={"by": "alice"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert resp.status_code == 200, resp.text

        wait_until(lambda: ApprovalQueue(store).get(pending.id).status == "applied", timeout=60,
                   what="the approved update applied by the leader")
        wait_until(lambda: docker_client.containers.get(name).attrs["Config"]["Image"]
                   == f"{registry.addr}/{REPO}:2.0.0", timeout=60, what="the container on 2.0.0")
        [rec] = [r for r in UpdateHistory(store).list(deployment="prod") if r.to_ref == "2.0.0"]
        assert (rec.from_ref, rec.approved_by) == ("1.0.0", "alice")
        assert [e["to_ref"] for e in _events(logs[leader], "update.start")] == ["2.0.0"]
        assert _events(logs[follower], "update.start") == []
        assert store.execute("SELECT count(*) AS n FROM leader_triggers").fetchone()["n"] == 0
    finally:
        _stop(*replicas)
        for c in docker_client.containers.list(all=True, filters={"name": name}):
            c.remove(force=True, v=True)
