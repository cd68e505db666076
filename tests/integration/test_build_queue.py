"""Builds as jobs on the PostgreSQL store's queue: ``poller worker`` processes run them, each
(image, ref, commit) exactly once, a worker killed mid-build is retried once by another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

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


def _worker(cfg, docker_host, *extra: str, host: str | None = None) -> subprocess.Popen:
    """A ``poller worker`` logging to a file next to ``cfg`` (a pipe nobody reads would fill and
    stall it mid-build). ``host``: it runs under that host name (its own UTS namespace), as a
    worker on another machine would."""
    fd, _ = tempfile.mkstemp(dir=Path(cfg).parent, prefix="worker-", suffix=".log")
    argv = [sys.executable, "-m", "poller", "--log-format", "json", "worker", "--config", str(cfg),
            *extra]
    if host is not None:
        argv = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *argv]
    with os.fdopen(fd, "w") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=out,
                                env={**os.environ, "DOCKER_HOST": docker_host})


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


def _jobs(store: Store) -> list[tuple[int, str]]:
    """(attempts, status) of every build job, sorted."""
    rows = store.execute("SELECT attempts, status FROM procrastinate_jobs").fetchall()
    return sorted((r["attempts"], r["status"]) for r in rows)


def _wait(store: Store, predicate, *, timeout: float, what: str) -> None:
    """``wait_until``, saying on failure where the builds and their jobs stood."""
    try:
        wait_until(predicate, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; builds {_statuses(store)}; jobs {_jobs(store)}") from None


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


@pytest.mark.parametrize("first_host", [None, "builder-a"], ids=["same-host", "other-host"])
def test_worker_killed_mid_build_is_built_exactly_once_more_by_another_worker(
        tmp_path, registry, git_repo, docker_host, pg_url, first_host):
    """On another host the killed worker's build claim is not judged by its pid but by its
    lease, longer than the queue's: the sweep that puts the job back releases it."""
    sha = _slow_app(git_repo, 8)
    cfg = _config(tmp_path, registry, git_repo, pg_url, lease=4)
    # The jobs are queued before the worker starts: a slow machine's slow ``poller once`` exit
    # must not let the builds finish before the test looks.
    assert poller("once", "--config", str(cfg)).returncode == 0
    store = Store(pg_url)
    first = _worker(cfg, docker_host, "--concurrency", "2", host=first_host)
    second = None
    try:
        _wait(store, lambda: [s for _, s in _statuses(store)] == ["running", "running"],
              timeout=120, what="both builds running on the first worker")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _worker(cfg, docker_host, "--concurrency", "2")
        _wait(store, lambda: _statuses(store).count(("tag:v1.0.0", "succeeded")) == 1
              and _statuses(store).count(("branch:master", "succeeded")) == 1,
              timeout=240, what="the killed builds retried on the second worker")
        assert _statuses(store) == [("branch:master", "interrupted"), ("branch:master", "succeeded"),
                                    ("tag:v1.0.0", "interrupted"), ("tag:v1.0.0", "succeeded")]
        # A worker records its build before it closes the build's job: the job rows settle after.
        _wait(store, lambda: not {"todo", "doing"} & {s for _, s in _jobs(store)}, timeout=60,
              what="the second worker closed both jobs")
        assert _jobs(store) == [(2, "succeeded"), (2, "succeeded")]
        wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
                   what="push events")
        assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]
    finally:
        _stop(first, *([second] if second else []))


def test_a_commit_queued_or_being_built_is_not_queued_again(
        tmp_path, registry, git_repo, docker_host, pg_url):
    sha = _slow_app(git_repo, 6)
    cfg = _config(tmp_path, registry, git_repo, pg_url, lease=120)
    store = Store(pg_url)
    assert poller("once", "--config", str(cfg)).returncode == 0
    assert poller("once", "--config", str(cfg)).returncode == 0  # the jobs wait: none added
    assert _jobs(store) == [(0, "todo"), (0, "todo")]
    worker = _worker(cfg, docker_host, "--concurrency", "2")
    try:
        _wait(store, lambda: [s for _, s in _statuses(store)] == ["running", "running"],
              timeout=120, what="both builds running on the worker")
        # Held mid-build (before its pushes) for as long as the next decision takes.
        worker.send_signal(signal.SIGSTOP)
        try:
            assert (_pushes(registry, "1.0.0"), _pushes(registry, "staging")) == (0, 0)
            res = poller("once", "--config", str(cfg), "--json")
            assert res.returncode == 0, res.stderr
            assert _jobs(store) == [(0, "doing"), (0, "doing")]
            assert res.stdout.count('"in-flight"') == 2, res.stdout
        finally:
            worker.send_signal(signal.SIGCONT)
        _wait(store, lambda: _statuses(store) == [("branch:master", "succeeded"),
                                                  ("tag:v1.0.0", "succeeded")],
              timeout=240, what="both builds succeeded")
        _wait(store, lambda: not {"todo", "doing"} & {s for _, s in _jobs(store)}, timeout=60,
              what="the worker closed both jobs")
        assert _jobs(store) == [(1, "succeeded"), (1, "succeeded")]
        wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
                   what="push events")
        assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]
    finally:
        _stop(worker)


def _finishes_waiting_on_a_lock(pg_url: str) -> int:
    """How many ``finish_build`` statements wait on a row lock (pushed, not yet recorded)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                            " current_database() AND wait_event_type = 'Lock' AND query LIKE %s",
                            ("UPDATE builds SET status=%",)).fetchone()[0]


def test_worker_killed_after_its_push_has_that_build_recorded_succeeded_without_a_second_push(
        tmp_path, registry, git_repo, docker_host, pg_url):
    import psycopg

    sha = _slow_app(git_repo, 3)
    cfg = _config(tmp_path, registry, git_repo, pg_url, lease=4)
    assert poller("once", "--config", str(cfg)).returncode == 0
    store = Store(pg_url)
    first = _worker(cfg, docker_host, "--concurrency", "2")
    second = None
    try:
        _wait(store, lambda: [s for _, s in _statuses(store)] == ["running", "running"],
              timeout=120, what="both builds running on the first worker")
        # The builds' rows are locked by another session: once pushed, the worker's record of
        # the outcome waits on the lock, where it is killed (its transaction never commits).
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT id FROM builds WHERE status = 'running' FOR UPDATE")
            wait_until(lambda: _finishes_waiting_on_a_lock(pg_url) == 2, timeout=120,
                       what="both builds pushed and waiting to record their outcome")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            holder.rollback()
        wait_until(lambda: _pushes(registry, "1.0.0") and _pushes(registry, "staging"),
                   what="push events")
        second = _worker(cfg, docker_host, "--concurrency", "2")
        _wait(store, lambda: _statuses(store) == [("branch:master", "succeeded"),
                                                  ("tag:v1.0.0", "succeeded")],
              timeout=120, what="the killed builds recorded succeeded from the registry")
        _wait(store, lambda: not {"todo", "doing"} & {s for _, s in _jobs(store)}, timeout=60,
              what="the second worker closed both jobs")
        assert _jobs(store) == [(2, "succeeded"), (2, "succeeded")]
        assert [_pushes(registry, t) for t in ("1.0.0", f"sha-{sha[:12]}", "staging")] == [1, 1, 1]
        for build in store.builds():
            assert build.digest and build.digest.startswith("sha256:")
            assert build.error is None and "found it in the registry" in build.log
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
        # The build is recorded before its job is closed: wait for the job's final state.
        wait_until(lambda: _jobs(store) and _jobs(store)[0][1] not in ("todo", "doing"),
                   what="the worker closed the job")
        assert [s for _, s in _jobs(store)] == ["failed"]
        _stop(broken)  # else the next job may land on it again
        healthy = _worker(cfg, docker_host)
        assert poller("once", "--config", str(cfg)).returncode == 0
        wait_until(lambda: ("branch:master", "succeeded") in _statuses(store), timeout=180,
                   what="the next cycle's job built on a worker with an engine")
    finally:
        _stop(broken, *([healthy] if healthy else []))
