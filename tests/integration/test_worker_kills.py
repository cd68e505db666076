"""Build workers killed (``kill -9``) mid-build, repeatedly, during a burst of tags: nothing is
lost and nothing is built twice, however many times the same job's worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poller.store import Store
from tests.fixtures.services import wait_until
from tests.integration.test_build_lock import _slow_app
from tests.integration.test_build_queue import _stop
from tests.integration.test_pipeline import REPO, ROOT, make_config, write_config
from tests.integration.test_replicas import LEADER_INTERVAL, _leading, _replica

pytestmark = pytest.mark.integration

LEASE = 4.0
KILLS = 3  # the same job's worker killed three times: past any fixed retry budget


def _worker(cfg: Path, docker_host: str, log: Path) -> subprocess.Popen:
    """A ``poller worker`` logging to a file (a pipe nobody reads would fill and stall it)."""
    out = open(log, "a")  # noqa: SIM115 - the process writes it for its whole life
    return subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "json", "worker",
                             "--config", str(cfg), "--concurrency", "2"], cwd=ROOT, stdout=out,
                            stderr=out, env={**os.environ, "DOCKER_HOST": docker_host})


def _running(store: Store) -> list[dict]:
    return [dict(r) for r in store.execute(
        "SELECT ref, sha, pid FROM builds WHERE status='running'").fetchall()]


def test_workers_killed_mid_build_repeatedly_every_tag_is_built_exactly_once(
        tmp_path, registry, git_repo, docker_host, pg_url, record_property):
    _slow_app(git_repo, 3)  # every build spends a few seconds in a RUN step: killable mid-build
    data = make_config(tmp_path, registry, git_repo, interval=0.5)
    data["poll"] = {"interval": 0.5, "jitter": 0.1, "resync": 30}
    data["store"] = {"url": pg_url, "leader_interval": LEADER_INTERVAL, "queue": {"lease": LEASE}}
    cfg = write_config(tmp_path, data)
    log = tmp_path / "replica.log"
    workers = [_worker(cfg, docker_host, tmp_path / f"worker-{i}.log") for i in range(2)]
    replica = _replica(cfg, docker_host, log)
    store = Store(pg_url)
    try:
        wait_until(lambda: _leading(log), timeout=60, what="the replica leading")
        tags = ["1.0.0"]
        for i in range(20):  # a burst: twenty tagged commits pushed at once
            git_repo.commit(f"release {i}", {"app.txt": f"v{i}\n"})
            git_repo.tag(f"v1.1.{i}")
            tags.append(f"1.1.{i}")

        def victim_of(target: tuple[str, str] | None) -> dict | None:
            live = {p.pid for p in workers if p.poll() is None}
            wanted = (lambda b: (b["ref"], b["sha"]) == target) if target else (
                lambda b: b["ref"].startswith("tag:"))
            return next((b for b in _running(store) if b["pid"] in live and wanted(b)), None)

        # Kill the worker building some tag mid-build; then, each time, the worker the same
        # job was put back on: one job stalled again and again.
        target: tuple[str, str] | None = None
        for n in range(KILLS):
            build = wait_until(lambda t=target: victim_of(t), timeout=120,
                               what=f"kill {n + 1}: a worker mid-build of {target or 'any tag'}")
            target = (build["ref"], build["sha"])
            [proc] = [p for p in workers if p.pid == build["pid"]]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            workers.append(_worker(cfg, docker_host, tmp_path / f"worker-{len(workers)}.log"))
        killed_last = time.monotonic()

        assert target is not None
        wait_until(lambda: target[0].removeprefix("tag:v") in registry.tags(REPO), timeout=120,
                   what=f"the tag whose build was killed {KILLS} times built once more")
        record_property("rebuilt_after_last_kill_seconds", round(time.monotonic() - killed_last, 2))
        wait_until(lambda: set(tags) <= set(registry.tags(REPO)), timeout=300,
                   what="every tag of the burst built")
        wait_until(lambda: all(registry.manifest_pushes(REPO, t) for t in tags),
                   what="push events for every tag")
        assert {t: len(registry.manifest_pushes(REPO, t)) for t in tags} == {t: 1 for t in tags}
        # A worker records its build after its push, so the registry can show a tag before the
        # store says it was built: wait for the records. A worker killed between its push and
        # its record leaves the build ``interrupted`` until the job put back finds the tag pushed
        # and records it succeeded (building nothing).
        wanted = {f"tag:v{t}" for t in tags}

        def recorded():
            builds = store.builds(limit=500)
            return builds if wanted <= {b.ref for b in builds if b.status == "succeeded"} else None
        builds = wait_until(recorded, timeout=120, what="every tag's build recorded succeeded")
        released = [b.ref for b in builds if b.ref.startswith("tag:") and b.status == "succeeded"]
        assert len(released) == len(set(released))  # never recorded built twice
        interrupted = [b.ref for b in builds if b.status == "interrupted"].count(target[0])
        # every kill interrupted a build of the target; the last one may have come after its push,
        # and then the retry recorded that very build succeeded
        assert interrupted in (KILLS - 1, KILLS)
    finally:
        _stop(replica, *workers)
