"""Ctrl-C during ``poller once`` while a build runs: the first one says what the process waits
for (and how to stop at once), the second stops at once. Never a silent wait, never a
traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.fixtures.services import wait_until
from tests.integration.test_pipeline import ROOT, make_config, write_config

pytestmark = pytest.mark.integration


def test_ctrl_c_mid_build_says_it_waits_for_the_build_and_a_second_ctrl_c_stops_now(
        tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    git_repo.commit("slow", {"Dockerfile": open(git_repo.work / "Dockerfile").read() +
                             'RUN ["/bin/busybox", "sleep", "60"]\n'})
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    err = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "poller", "--log-level", "warning", "once",
                             "--config", str(cfg)], cwd=ROOT, env={**os.environ, "DOCKER_HOST": docker_host},
                            stdout=subprocess.DEVNULL, stderr=err, text=True)
    from poller.store import Store

    store = Store(tmp_path / "slipway.db")
    try:
        wait_until(lambda: any(b.status == "running" for b in store.builds()), timeout=60,
                   what="a running build")
        proc.send_signal(signal.SIGINT)
        said = lambda: (tmp_path / "stderr").read_text()  # noqa: E731
        wait_until(lambda: "interrupted" in said(), timeout=15, what="a line saying what it waits for")
        assert proc.poll() is None  # still letting the build finish
        assert "1 running build" in said() and "Ctrl-C again" in said()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in said(), said()
