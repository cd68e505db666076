"""What someone new to Slipway gets wrong on the first day, through the real ``poller``
command: each mistake is one line on stderr naming the setting and the reason, never a
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def poller(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poller", "--log-level", "warning", *args],
                          check=False, cwd=ROOT, text=True, capture_output=True, timeout=timeout,
                          env={**os.environ, "HOME": tempfile.gettempdir()})


def config(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"url": "127.0.0.1:5000", "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")}, "state_dir": str(tmp_path / "state"),
        "sources": [{"name": "game-server", "git": {"url": "file:///nowhere.git"},
                     "branch": "master", "image": "127.0.0.1:5000/game-server"}], **extra}))
    return path


def assert_one_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_poller_run_on_a_port_already_in_use_is_one_line_naming_api_listen(tmp_path):
    # The demo's closing hint is `poller run`; a second one (or anything else on 8081) is the
    # most common first-day mistake.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        path = config(tmp_path, api={"listen": listen})
        res = poller("run", "--config", str(path))
    assert res.returncode == 2
    assert_one_line(res, "poller: config error:", str(path), "api.listen", listen, "already in use")


def test_poller_run_on_an_address_of_another_machine_is_one_line_naming_api_listen(tmp_path):
    path = config(tmp_path, api={"listen": "192.0.2.1:8081"})  # TEST-NET-1: never local
    res = poller("run", "--config", str(path))
    assert res.returncode == 2
    assert_one_line(res, "poller: config error:", str(path), "api.listen", "192.0.2.1:8081")


def test_fleet_commands_without_a_fleet_say_so_instead_of_asking_etcd(tmp_path):
    # Without this, `poller fleet status` reported an etcd connection error (or empty tables
    # when some etcd answered on the default endpoint).
    path = config(tmp_path)
    for args in (["fleet", "status"], ["fleet", "rollout", "lobby", "1.2.0"], ["fleet", "pause", "lobby"]):
        res = poller(*args, "--config", str(path))
        assert res.returncode == 2, res
        assert_one_line(res, "poller: config error:", str(path), "fleet.services", "no fleet")


def test_poller_agent_without_fleet_agent_is_one_line_naming_it(tmp_path):
    path = config(tmp_path)
    res = poller("agent", "--config", str(path), timeout=30)
    assert res.returncode == 2, res
    assert_one_line(res, "poller: config error:", str(path), "fleet.agent")


def test_a_state_dir_that_cannot_be_created_is_one_line_naming_state_dir(tmp_path):
    # It used to fail every build of the pass with "internal error: FileNotFoundError(2, ...)",
    # naming neither the setting nor the path.
    (tmp_path / "a-file").write_text("")
    path = config(tmp_path, api={"listen": None})
    data = yaml.safe_load(path.read_text())
    data["state_dir"] = str(tmp_path / "a-file" / "state")
    path.write_text(yaml.safe_dump(data))
    res = poller("once", "--config", str(path))
    assert res.returncode == 2, res
    assert_one_line(res, "poller: config error:", str(path), "state_dir", str(tmp_path / "a-file"))


def test_once_says_when_the_configured_branch_is_not_in_the_repository(tmp_path):
    # `branch: main` on a repository whose branch is `master`: the pass used to print nothing
    # about the branch at all (and build no staging image), leaving a newcomer guessing.
    work = tmp_path / "work"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q", "-b", "master", str(work)],
                 ["-C", str(work), "commit", "-q", "--allow-empty", "-m", "first"]):
        subprocess.run(["git", *args], check=True, env=env)
    path = config(tmp_path, api={"listen": None})
    data = yaml.safe_load(path.read_text())
    data["sources"][0].update(git={"url": f"file://{work}"}, branch="main")
    path.write_text(yaml.safe_dump(data))
    res = poller("once", "--config", str(path))
    assert "Traceback" not in res.stderr, res.stderr
    row = [line for line in res.stdout.splitlines() if "branch:main" in line]
    assert row and "no branch 'main'" in row[0], res.stdout


def test_an_image_on_another_registry_than_registry_url_is_refused_naming_both(tmp_path):
    """Builds push to the image's host but every check reads registry.url: with the two apart,
    the pipeline would never see what it pushed and build it again. Said at load instead."""
    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"url": "127.0.0.1:5000", "insecure": True},
        "sources": [{"name": "game-server", "git": {"url": "file:///nowhere.git"},
                     "branch": "master", "image": "127.0.0.1:5001/game-server"}],
        "fleet": {"services": {"db": {"image": "127.0.0.1:5000/db"}}}}))
    res = poller("check-config", str(path))
    assert res.returncode == 2
    assert_one_line(res, "sources[0].image", "127.0.0.1:5001", "registry.url is 127.0.0.1:5000",
                    "127.0.0.1:5000/game-server")
    data = yaml.safe_load(path.read_text())
    data["sources"][0]["image"] = "127.0.0.1:5000/game-server"
    data["fleet"]["services"]["db"]["image"] = "registry.local/db"
    path.write_text(yaml.safe_dump(data))
    assert_one_line(poller("check-config", str(path)), "fleet.services.db.image", "registry.local")


def test_docker_hub_under_any_of_its_names_is_one_registry(tmp_path):
    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"url": "https://registry-1.docker.io"},
        "sources": [{"name": "game-server", "git": {"url": "file:///nowhere.git"},
                     "branch": "master", "image": "docker.io/studio/game-server"}]}))
    res = poller("check-config", str(path))
    assert res.returncode == 0, res.stderr
