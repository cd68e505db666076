"""``poller run``: the scheduled loop picks up merges and tags, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.fixtures.services import wait_until
from tests.integration.test_pipeline import REPO, ROOT, make_config, write_config

pytestmark = pytest.mark.integration


def test_run_loop_follows_merges_and_tags_then_stops_on_sigterm(tmp_path, registry, git_repo, docker_host):
    first = git_repo.seed_scratch_app("v1\n")
    data = make_config(tmp_path, registry, git_repo, interval=0.5)
    data["poll"] = {"interval": 0.5, "jitter": 0.1, "resync": 30}
    cfg = write_config(tmp_path, data)
    log = open(tmp_path / "poller.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "--config", str(cfg)], cwd=ROOT,
                            env={**os.environ, "DOCKER_HOST": docker_host}, stdout=log, stderr=log)
    try:
        def staging_at(sha):
            return registry.digest(REPO, "staging") and \
                registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == sha
        wait_until(lambda: staging_at(first), timeout=60, what="staging at the first commit")
        second = git_repo.commit("merge", {"app.txt": "v2\n"})
        wait_until(lambda: staging_at(second), timeout=60, what="staging at the merged commit")
        git_repo.tag("v1.0.0")
        wait_until(lambda: "1.0.0" in registry.tags(REPO), timeout=60, what="1.0.0 pushed")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    log.seek(0)
    text = log.read()
    assert code == 0, text[-3000:]
    assert "scheduler.stopped" in text
    # Each image was built once: two staging builds and one release, never repeated.
    wait_until(lambda: registry.manifest_pushes(REPO, "1.0.0"), what="push event for 1.0.0")
    assert len(registry.manifest_pushes(REPO, "1.0.0")) == 1
    assert len(registry.manifest_pushes(REPO, "staging")) == 2
