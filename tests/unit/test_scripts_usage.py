"""The scripts a new user types first (``scripts/demo``, ``scripts/test``, ``scripts/services``,
``scripts/toolchain``): ``--help`` prints usage and does nothing else; a wrong argument is usage
on stderr and exit 2, never a traceback and never the command run anyway."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts" / name), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def trap(tmp_path: Path) -> dict:
    """Settings under which any real work fails at once (a directory below a regular file):
    a script that starts working instead of printing its usage fails the test, cheaply."""
    (tmp_path / "file").write_text("")
    blocked = str(tmp_path / "file" / "dir")
    return {"SLIPWAY_DEMO_DIR": blocked, "SLIPWAY_DEMO_SKIP_INSTALL": "1",
            "SLIPWAY_TOOLCHAIN_DIR": blocked, "SLIPWAY_SERVICES_DIR": blocked}


@pytest.mark.parametrize("name", ["demo", "services"])
def test_help_prints_usage_and_exits_0(tmp_path, name):
    res = script(name, "--help", env=trap(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout.lower() and "Traceback" not in res.stderr


def test_scripts_test_help_is_pytests_help_without_building_the_toolchain(tmp_path):
    res = script("test", "--help", env=trap(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "-m MARKEXPR" in res.stdout and "toolchain ready" not in res.stdout


@pytest.mark.parametrize("name,args", [
    ("demo", ["--bogus"]),
    ("demo", ["again"]),
    ("services", ["up", "postgress"]),   # a typo of a service name
    ("toolchain", ["--state-dir"]),       # the flag without its directory
    ("toolchain", ["up", "--nodes"]),     # a typo of --node: must not start a cluster without it
    ("toolchain", ["where", "extra"]),
    ("toolchain", ["down", "--force"]),
    ("toolchain", ["build", "kube", "buildkit"]),
])
def test_a_wrong_argument_is_usage_and_exit_2(tmp_path, name, args):
    res = script(name, *args, "--state-dir", str(tmp_path), env=trap(tmp_path)) \
        if name == "toolchain" and args != ["--state-dir"] else script(name, *args, env=trap(tmp_path))
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert "usage:" in res.stderr.lower() and "Traceback" not in res.stderr, res.stderr
