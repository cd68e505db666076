"""Builds as jobs on the PostgreSQL store's queue: ``poller worker`` processes run them, each
(image, ref, commit) exactly once, a worker killed mid-build is retried once by another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from poller.store import Store
from tests.fixtures.services import wait_until
from tests.integration.test_build_lock import _pushes, _slow_app
from tests.integration.test_pipeline import ROOT, make_config, poller, write_config

pytestmark = pytest.mark.integration


def _config(tmp_path, registry, git_repo, pg_url, *, lease: float = 30.0):
    data = make_config(tmp_path, registry, git_repo)
    data["store"] = {"url": pg_url, "queue": {"lease": lease}}
    return write_config(tmp_path, data)


def _worker(cfg, docker_host, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "poller", "worker", "--config", str(cfg), *extra],
                            cwd=ROOT, env={**os.environ, "DOCKER_HOST": docker_host},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _statuses(store: Store) -> list[tuple[str, str]]:
    return sorted((b.ref, b.status) for b in store.builds())


def test_two_workers_build_each_commit_exactly_once_from_the_queue(
        tmp_path, registry, git_repo, docker_host, pg_url):
    sha = _slow_app(git_repo, 2)
    cfg = _config(tmp_path, registry, git_repo, pg_url)
    workers = [_worker(cfg, docker_host, "--concurrency", "2") for _ in range(2)]
    try:
        # Two pollers decide the same builds at once: the queue keeps one job per commit.
        enqueuers = [subprocess.Popen([sys.executable, "-m", "poller", "once", "--config", str(cfg)],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2)]
        for p in enqueuers:
            assert p.wait(120) == 0, p.stderr.read()
        store = Store(pg_url)
        wait_until(lambda: _statuses(store) == [("branch:master", "succeeded"),
                                                ("tag:v1.0.0", "succeeded")],
                   timeout=240, what="both builds succeeded on the workers")
        # A poller run after the builds finds them done: nothing queued again.
        assert poller("once", "--config", str(cfg)).returncode == 0
        wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
                   what="push events")
        assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]
        assert len(store.builds()) == 2
    finally:
        _stop(*workers)


def test_worker_killed_mid_build_is_built_exactly_once_more_by_another_worker(
        tmp_path, registry, git_repo, docker_host, pg_url):
    sha = _slow_app(git_repo, 8)
    cfg = _config(tmp_path, registry, git_repo, pg_url, lease=4)
    first = _worker(cfg, docker_host, "--concurrency", "2")
    second = None
    try:
        assert poller("once", "--config", str(cfg)).returncode == 0
        store = Store(pg_url)
        wait_until(lambda: [s for _, s in _statuses(store)] == ["running", "running"], timeout=120,
                   what="both builds running on the first worker")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _worker(cfg, docker_host, "--concurrency", "2")
        wait_until(lambda: _statuses(store).count(("tag:v1.0.0", "succeeded")) == 1
                   and _statuses(store).count(("branch:master", "succeeded")) == 1,
                   timeout=240, what="the killed builds retried on the second worker")
        assert _statuses(store) == [("branch:master", "interrupted"), ("branch:master", "succeeded"),
                                    ("tag:v1.0.0", "interrupted"), ("tag:v1.0.0", "succeeded")]
        attempts = store.execute("SELECT attempts, status FROM procrastinate_jobs").fetchall()
        assert sorted((r["attempts"], r["status"]) for r in attempts) == [
            (2, "succeeded"), (2, "succeeded")]
        wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
                   what="push events")
        assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]
    finally:
        _stop(first, *([second] if second else []))


def test_worker_refuses_a_sqlite_store_in_one_line(tmp_path, registry, git_repo):
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    res = poller("worker", "--config", str(cfg), timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    [line] = res.stderr.strip().splitlines()
    assert "PostgreSQL store" in line


def test_a_workers_engine_going_away_fails_only_its_job(
        tmp_path, registry, git_repo, docker_host, pg_url):
    git_repo.seed_scratch_app("v1\n")
    cfg = _config(tmp_path, registry, git_repo, pg_url)
    broken = _worker(cfg, f"unix://{tmp_path}/no-engine.sock", "--concurrency", "1")
    healthy = None
    try:
        assert poller("once", "--config", str(cfg)).returncode == 0
        store = Store(pg_url)
        wait_until(lambda: _statuses(store) == [("branch:master", "upstream-error")], timeout=120,
                   what="the build failed on the worker without an engine")
        assert broken.poll() is None  # the worker itself carries on
        [job] = store.execute("SELECT status FROM procrastinate_jobs").fetchall()
        assert job["status"] == "failed"
        _stop(broken)  # else the next job may land on it again
        healthy = _worker(cfg, docker_host)
        assert poller("once", "--config", str(cfg)).returncode == 0
        wait_until(lambda: ("branch:master", "succeeded") in _statuses(store), timeout=180,
                   what="the next cycle's job built on a worker with an engine")
    finally:
        _stop(broken, *([healthy] if healthy else []))
