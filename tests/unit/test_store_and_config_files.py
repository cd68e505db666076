"""A store or config file that can't be used is one line naming the file and what to do,
from every command that opens it: never a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

#: Commands that open the store (all of them load the config first).
STORE_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["approvals", "list"],
    ["updates", "status"],
]


def poller(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poller", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60,
                          env={**os.environ, "HOME": tempfile.gettempdir()})


def config(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"url": "127.0.0.1:5000", "insecure": True},
        "store": {"path": str(store)}, "state_dir": str(tmp_path / "state"),
        "api": {"listen": None},
        "sources": [{"name": "game-server", "git": {"url": "file:///nowhere.git"},
                     "branch": "master", "image": "127.0.0.1:5000/game-server"}]}))
    return path


def assert_one_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncated(path: Path) -> None:
    from poller.store import Store

    store = Store(path)
    for i in range(400):
        store.record_event("test", f"subject {i}", padding="x" * 500)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _old_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE builds (id INTEGER PRIMARY KEY, source TEXT, image TEXT,"
                       " ref TEXT, sha TEXT, status TEXT, started_at REAL);")
    conn.close()


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("damage, words", [
    (_garbage, ("not a Slipway store", "move it aside")),
    (_truncated, ("damaged", "move it aside")),
    (_old_schema, ("older Slipway", "move it aside")),
], ids=["garbage", "truncated", "old-schema"])
def test_unusable_store_file_is_one_line_naming_it(tmp_path, command, damage, words):
    store = tmp_path / "slipway.db"
    damage(store)
    cfg = config(tmp_path, store)
    assert_one_line(poller(*command, "--config", str(cfg)), str(store), *words)


@pytest.mark.parametrize("command", STORE_COMMANDS + [["once"]], ids=" ".join)
def test_store_path_that_is_a_directory_is_one_line_naming_it(tmp_path, command):
    store = tmp_path / "store-dir"
    store.mkdir()
    assert_one_line(poller(*command, "--config", str(config(tmp_path, store))),
                    str(store), "is a directory")


def test_read_only_store_is_one_line_naming_it(tmp_path):
    from poller.store import Store

    store = tmp_path / "slipway.db"
    Store(store).close()
    cfg = config(tmp_path, store)
    # Root may write to any file a mode forbids; an immutable file is read-only even to root.
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        for command in STORE_COMMANDS + [["once"]]:
            assert_one_line(poller(*command, "--config", str(cfg)), str(store), "read-only")
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)


@pytest.mark.parametrize("command", [["check-config"], ["status", "--config"], ["once", "--config"],
                                     ["approvals", "list", "--config"]], ids=" ".join)
def test_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, command):
    cfg = tmp_path / "slipway.yaml"
    cfg.write_bytes(b"registry:\n  url: caf\xe9:5000\n")
    assert_one_line(poller(*command, str(cfg)), str(cfg), "not UTF-8")
