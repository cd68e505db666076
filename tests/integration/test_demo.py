"""``scripts/demo`` run twice, as a new user would (install skipped: the machine has it): the
first run ends at two running containers, the second moves both and walks a major release
through approval."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time

import pytest

from tests.fixtures.services import ROOT

pytestmark = pytest.mark.integration


def demo(env: dict) -> tuple[str, float]:
    started = time.monotonic()
    res = subprocess.run([str(ROOT / "scripts" / "demo")], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    return res.stdout, time.monotonic() - started


def rows(block: str, name: str) -> list[tuple[str, str, str]]:
    """(id, image, digest) of container ``name`` in each container table of ``block``."""
    return re.findall(rf"^\s+{re.escape(name)}-(?:staging|release)\s+(\w{{12}})\s+(\S+)\s+(sha256:\w{{12}})",
                      block, re.MULTILINE)


def test_demo_twice_ends_at_running_containers_that_follow_merges_tags_and_approvals(
        tmp_path, docker_client):
    name = f"demo{secrets.token_hex(3)}"
    env = {**os.environ, "SLIPWAY_DEMO_DIR": str(tmp_path / "demo"), "SLIPWAY_DEMO_NAME": name,
           "SLIPWAY_DEMO_SKIP_INSTALL": "1", "PYTHONPATH": str(ROOT)}
    try:
        first, _ = demo(env)
        assert "\x1b[" not in first                          # plain text: fine in a log file
        started = rows(first, name)
        assert len(started) == 2, first
        staging = docker_client.containers.get(f"{name}-staging")
        release = docker_client.containers.get(f"{name}-release")
        assert staging.attrs["Config"]["Image"].endswith(":staging")
        assert release.attrs["Config"]["Image"].endswith(":1.0.0")
        assert "http://127.0.0.1:8081/dashboard" in first and "poller run --config" in first

        second, took = demo(env)
        assert took < 120, f"a warm second run took {took:.0f}s"
        before, after_patch = second.split("after (new container ids", 1)
        after_patch, after_major = after_patch.split("== a new major release", 1)
        old, new = rows(before, name), rows(after_patch, name)
        assert len(old) == len(new) == 2
        assert all(o[0] != n[0] and o[2] != n[2] for o, n in zip(old, new)), second
        assert new[1][1].endswith(":1.0.1")
        assert "waiting-approval" in after_major and "approved" in after_major
        waiting = after_major.split("waiting for approval", 1)[1].split("== approving", 1)[0]
        assert rows(waiting, name)[1][1].endswith(":1.0.1")  # held until approved
        assert rows(after_major.split("after the approval", 1)[1], name)[1][1].endswith(":2.0.0")
        assert docker_client.containers.get(f"{name}-release").attrs["Config"]["Image"].endswith(":2.0.0")
        assert "release board: http://127.0.0.1:8081/dashboard/releases" in second
    finally:
        for suffix in ("staging", "release"):
            for c in docker_client.containers.list(all=True, filters={"name": f"{name}-{suffix}"}):
                c.remove(force=True)
