"""Two ``poller`` processes on one store: each (image, ref, commit) is built exactly once,
and a holder killed mid-build does not block the build for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from poller.store import Store
from tests.fixtures.services import wait_until
from tests.integration.test_pipeline import REPO, ROOT, make_config, poller, write_config

pytestmark = pytest.mark.integration


def _slow_app(git_repo, seconds: int) -> str:
    git_repo.seed_scratch_app("v1\n")
    sha = git_repo.commit("slow", {"Dockerfile": open(git_repo.work / "Dockerfile").read() +
                                   f'RUN ["/bin/busybox", "sleep", "{seconds}"]\n'})
    git_repo.tag("v1.0.0")
    return sha


def _start_once(cfg, docker_host) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "poller", "once", "--config", str(cfg), "--json"],
                            cwd=ROOT, env={**os.environ, "DOCKER_HOST": docker_host},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pushes(registry, tag: str) -> int:
    return len(registry.manifest_pushes(REPO, tag))


def test_two_processes_on_one_store_build_each_commit_exactly_once(
        tmp_path, registry, git_repo, docker_host):
    sha = _slow_app(git_repo, 3)
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))

    procs = [_start_once(cfg, docker_host) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err

    builds = Store(tmp_path / "slipway.db").builds()
    assert sorted((b.ref, b.status) for b in builds) == [
        ("branch:master", "succeeded"), ("tag:v1.0.0", "succeeded")]
    assert all(b.sha == sha for b in builds)
    # The registry saw every tag pushed once: one build, no duplicate push, no re-tag.
    wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
               what="push events")
    assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]


def test_holder_killed_mid_build_is_built_exactly_once_more_by_the_next_run(
        tmp_path, registry, git_repo, docker_host):
    sha = _slow_app(git_repo, 6)
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    store = Store(tmp_path / "slipway.db")

    holder = _start_once(cfg, docker_host)
    wait_until(lambda: len([b for b in store.builds() if b.status == "running"]) == 2, timeout=120,
               what="both builds running")
    claims = store.execute("SELECT pid FROM build_claims").fetchall()
    assert {row["pid"] for row in claims} == {holder.pid}
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)

    res = poller("once", "--config", str(cfg), "--json", env_extra={"DOCKER_HOST": docker_host})
    assert res.returncode == 0, res.stderr
    statuses = sorted((b.ref, b.status) for b in store.builds())
    assert statuses == [("branch:master", "interrupted"), ("branch:master", "succeeded"),
                        ("tag:v1.0.0", "interrupted"), ("tag:v1.0.0", "succeeded")]
    wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
               what="push events")
    assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]
    assert store.execute("SELECT COUNT(*) FROM build_claims").fetchone()[0] == 0


def test_a_live_claim_from_another_process_is_respected_and_a_lapsed_one_taken_over(tmp_path):
    store = Store(tmp_path / "slipway.db")
    key = {"image": "127.0.0.1:5000/game-server", "ref": "branch:master"}
    alive = lambda host, pid: True  # noqa: E731 - the other host's process is up

    assert store.claim_build(**key, sha="a" * 40, holder="h1", host="other", pid=1, ttl=60,
                             holder_alive=alive) is None
    taken = store.claim_build(**key, sha="a" * 40, holder="h2", host="here", pid=2, ttl=60,
                              holder_alive=alive)
    assert taken is not None and taken["holder"] == "h1"
    # A dead holder (same host, pid gone) is taken over at once...
    assert store.claim_build(**key, sha="a" * 40, holder="h2", host="here", pid=2, ttl=60,
                             holder_alive=lambda host, pid: False) is None
    # ...and any holder's claim once its lease lapsed.
    store.execute("UPDATE build_claims SET expires_at = 0")
    assert store.claim_build(**key, sha="b" * 40, holder="h3", host="other", pid=3, ttl=60,
                             holder_alive=alive) is None
    assert store.live_claim(**key, holder_alive=alive)["holder"] == "h3"
