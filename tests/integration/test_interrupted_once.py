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
    git_repo.commit("slow", {"Dockerfile": (git_repo.work / "Dockerfile").read_text() +
                             'RUN ["/bin/busybox", "sleep", "60"]\n'})
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    err = (tmp_path / "stderr").open("w+")  # the child writes it while we read it
    proc = subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "text", "once",
                             "--config", str(cfg)], cwd=ROOT, env={**os.environ, "DOCKER_HOST": docker_host},
                            stdout=subprocess.DEVNULL, stderr=err, text=True)

    def said() -> str:
        return (tmp_path / "stderr").read_text()

    try:
        # In the long silent step: the build thread is blocked reading the engine's stream.
        wait_until(lambda: "sleep" in said(), timeout=60, what="the build's sleep step")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "interrupted" in said(), timeout=15, what="a line saying what it waits for")
        assert proc.poll() is None  # still letting the build finish
        assert "1 running build" in said() and "Ctrl-C again" in said()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 130, said()[-3000:]  # not when the 60 s step ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        err.close()
    assert "Traceback" not in said(), said()
