"""Plugin artifacts end to end: a real registry holds them, real containers fetch them at start
with the shipped ``fetch-plugins.sh`` (busybox only) and report what they run over HTTP; only
the outdated servers are restarted, busy ones drain first, the fast track reaches dev at once
and production refuses it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from pathlib import Path

import pytest
import requests
import yaml

from poller.artifacts import FETCH_SCRIPT
from poller.artifacts.rollout import PluginRollout
from poller.artifacts.store import ArtifactStore
from poller.config import load_config
from poller.registry.client import RegistryClient
from tests.fixtures.services import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY fetch-plugins.sh /fetch-plugins.sh
COPY www /www
ENV SLIPWAY_PLUGIN_DIR=/www/plugins
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox sh /fetch-plugins.sh && exec /bin/busybox httpd -f -p $PORT -h /www"]
"""
TYPES = {"lobby": {"plugins": {"chat": "latest", "perms": "latest"}, "max_unavailable": 1},
         "survival": {"plugins": {"perms": "latest", "world": "1.x"}, "depends_on": ["lobby"],
                      "max_unavailable": 1}}


def jar(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", text)
    return buf.getvalue()


class Servers:
    def __init__(self, tmp: Path, docker_client, docker_host: str, registry, types: dict | None = None):
        self.docker_host = docker_host
        self.types = types or TYPES
        self.id = uuid.uuid4().hex[:8]
        self.tmp, self.docker, self.registry = tmp, docker_client, registry
        self.image = f"slipway-test-server:{self.id}"
        # Servers are found by label on the shared Docker engine: environments of this test's own
        # (tests say "production" and "dev"), so another test's cycle never restarts these servers.
        self.envs = {"production": f"production{self.id}", "dev": f"dev{self.id}"}
        ctx = tmp / "server-image"
        (ctx / "www").mkdir(parents=True)
        (ctx / "www" / "index.html").write_text("game server\n")
        (ctx / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
        (ctx / "busybox").chmod(0o755)
        (ctx / "fetch-plugins.sh").write_text(FETCH_SCRIPT.read_text())
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        docker_client.images.build(path=str(ctx), tag=self.image, rm=True)
        self.config_path = tmp / "slipway.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "registry": {"url": registry.addr, "insecure": True},
            "plugins": {"server_types": self.types,
                        "environments": {self.envs["production"]: {"production": True},
                                         self.envs["dev"]: {"fast_track": True}},
                        "probe": {"stop_timeout": 1, "restart_timeout": 30, "report_path": "/plugins/plugins.txt"}}}))
        self.cfg = load_config(self.config_path)
        self.store = ArtifactStore(RegistryClient(self.cfg.registry), "plugins")
        self.ports: dict[str, int] = {}

    def start(self, name: str, server_type: str, env: str) -> None:
        port = free_port()
        self.ports[name] = port
        env = self.envs[env]
        channel = f"{env}-{server_type}"
        self.docker.containers.run(
            self.image, name=f"slw{self.id}-{name}", detach=True, network_mode="host",
            labels={"slipway.test": self.id, "slipway.server-type": server_type, "slipway.env": env,
                    "slipway.port": str(port)},
            environment={"PORT": str(port), "SLIPWAY_REGISTRY": self.registry.url,
                         "SLIPWAY_CHANNEL": channel,
                         "SLIPWAY_PLUGINS": " ".join(self.types[server_type]["plugins"])})

    def _get(self, name: str, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.ports[name]}{path}", timeout=3)

    def get(self, name: str, path: str) -> requests.Response:
        """The server's answer, whatever its status; a busy machine may take a while to give it."""
        return wait_until(lambda: (self._get(name, path),), timeout=30, what=f"{name} to answer {path}")[0]

    def plugins(self, name: str) -> dict[str, str] | None:
        """What the server itself says it runs right now: plugin -> version (None: no answer)."""
        try:
            r = self._get(name, "/plugins/plugins.txt")
        except requests.RequestException:
            return None
        return {ln.split()[0]: ln.split()[1] for ln in r.text.splitlines()} if r.ok else None

    def reported(self, name: str) -> dict[str, str]:
        """What a server that is up says it runs (a slow answer on a busy machine is waited for)."""
        return wait_until(lambda: self.plugins(name), timeout=30, what=f"{name} to report its plugins")

    def down(self, name: str) -> bool:
        """Refuses connections or has no full plugin set to show. A request that merely timed out
        (a busy machine) says nothing either way, so it does not count as down."""
        try:
            return not self._get(name, "/plugins/plugins.txt").ok
        except requests.Timeout:
            return False
        except requests.RequestException:
            return True

    def exec(self, name: str, *cmd: str) -> None:
        res = self.docker.containers.get(f"slw{self.id}-{name}").exec_run(["/bin/busybox", *cmd])
        assert res.exit_code == 0, res.output

    def started_at(self) -> dict[str, str]:
        def ts(value: str) -> str:  # RFC 3339 with the nanoseconds padded, so it sorts
            whole, _, frac = value.rstrip("Z").partition(".")
            return f"{whole}.{frac.ljust(9, '0')}"
        return {c.name.split("-", 1)[1]: ts(c.attrs["State"]["StartedAt"])
                for c in self.docker.containers.list(all=True, filters={"label": f"slipway.test={self.id}"})}

    def cycle(self, env: str):
        """One cycle; container names in the report are shortened to the server names."""
        report = PluginRollout(self.cfg.plugins, self.store, self.docker).cycle(self.envs[env])
        for attr in ("restarted", "draining", "up_to_date"):
            setattr(report, attr, [n.split("-", 1)[1] for n in getattr(report, attr)])
        return report

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "poller", "plugin", *args, "--config", str(self.config_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DOCKER_HOST": self.docker_host})

    def cleanup(self) -> None:
        for c in self.docker.containers.list(all=True, filters={"label": f"slipway.test={self.id}"}):
            c.remove(force=True)
        self.docker.images.remove(self.image, force=True)


@pytest.fixture
def servers(tmp_path, docker_client, docker_host, registry):
    s = Servers(tmp_path, docker_client, docker_host, registry)
    yield s
    s.cleanup()


class Quorum(threading.Thread):
    """Counts, per server type, servers not answering with a full plugin set, all the time."""

    def __init__(self, servers: Servers, members: dict[str, list[str]]):
        super().__init__(daemon=True)
        self.servers, self.members = servers, members
        self.worst = {t: 0 for t in members}
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for t, names in self.members.items():
                down = sum(1 for n in names if self.servers.down(n))
                self.worst[t] = max(self.worst[t], down)
            self.halt.wait(0.05)


def test_only_outdated_servers_restart_busy_ones_drain_first_types_in_order(servers):
    for plugin in ("chat", "perms", "world"):
        servers.store.push(plugin, jar(f"{plugin} 1.0.0"), "1.0.0")
    assert servers.cycle("production").restarted == []  # channels exist; no servers yet
    members = {"lobby": ["lobby-1", "lobby-2"], "survival": ["survival-1", "survival-2"]}
    for t, names in members.items():
        for n in names:
            servers.start(n, t, "production")
    wait_until(lambda: all(servers.plugins(n) for ns in members.values() for n in ns), timeout=60,
               what="servers to fetch their plugins and answer")
    assert servers.reported("lobby-1") == {"chat": "1.0.0", "perms": "1.0.0"}
    assert servers.reported("survival-1") == {"perms": "1.0.0", "world": "1.0.0"}
    quorum = Quorum(servers, members)
    quorum.start()

    # players on lobby-2; a new chat build concerns lobbies only
    servers.exec("lobby-2", "touch", "/www/busy")
    before = servers.started_at()
    servers.store.push("chat", jar("chat 1.1.0"), "1.1.0")
    report = servers.cycle("production")
    after = servers.started_at()
    assert report.restarted == ["lobby-1"] and report.draining == ["lobby-2"]
    assert servers.reported("lobby-1")["chat"] == "1.1.0"
    assert after["lobby-2"] == before["lobby-2"], "a server with players was restarted"
    assert servers.reported("lobby-2")["chat"] == "1.0.0"
    assert servers.get("lobby-2", "/draining").ok, "the busy server was not asked to drain"
    assert {n: after[n] for n in members["survival"]} == {n: before[n] for n in members["survival"]}
    assert servers.cycle("production").restarted == []  # still busy: still not restarted

    # the players leave: the next cycle restarts it and lets it take players again
    servers.exec("lobby-2", "rm", "/www/busy")
    assert servers.cycle("production").restarted == ["lobby-2"]
    assert servers.reported("lobby-2")["chat"] == "1.1.0"
    assert servers.get("lobby-2", "/draining").status_code == 404

    # perms is used by both types: lobbies first (survival depends on lobby), one at a time
    servers.store.push("perms", jar("perms 1.1.0"), "1.1.0")
    report = servers.cycle("production")
    assert report.restarted == ["lobby-1", "lobby-2", "survival-1", "survival-2"]
    started = servers.started_at()
    assert max(started[n] for n in members["lobby"]) < min(started[n] for n in members["survival"])
    assert all(servers.reported(n)["perms"] == "1.1.0" for ns in members.values() for n in ns)

    # world 2.0.0 is outside survival's rule "1.x": nothing moves
    servers.store.push("world", jar("world 2.0.0"), "2.0.0")
    quiet = servers.started_at()
    assert servers.cycle("production").restarted == []
    assert servers.started_at() == quiet
    quorum.halt.set()
    quorum.join(5)
    assert quorum.worst == {"lobby": 1, "survival": 1}


def test_fast_track_reaches_dev_within_one_cycle_and_production_refuses(servers, tmp_path):
    for plugin in ("chat", "perms", "world"):
        servers.store.push(plugin, jar(f"{plugin} 1.0.0"), "1.0.0")
    servers.cycle("production")
    servers.cycle("dev")
    servers.start("prod-lobby", "lobby", "production")
    servers.start("dev-lobby", "lobby", "dev")
    wait_until(lambda: servers.plugins("prod-lobby") and servers.plugins("dev-lobby"), timeout=60,
               what="servers up")
    build = tmp_path / "chat-1.2.0-SNAPSHOT.jar"
    build.write_bytes(jar("chat work in progress"))

    refused = servers.cli("push", str(build), "--env", servers.envs["production"])
    assert refused.returncode == 1 and "refuses the fast track" in refused.stderr
    prod_before = servers.started_at()["prod-lobby"]

    pushed = servers.cli("push", str(build), "--env", servers.envs["dev"])
    assert pushed.returncode == 0, pushed.stderr
    # the push ran the dev cycle: by the time it returns the dev server runs the new build
    version = servers.reported("dev-lobby")["chat"]
    assert version.startswith(f"0.0.0-fast.{servers.envs['dev']}."), version
    assert servers.reported("prod-lobby")["chat"] == "1.0.0"
    assert servers.cycle("production").restarted == []
    assert servers.started_at()["prod-lobby"] == prod_before

    status = servers.cli("status", "--env", servers.envs["dev"], "--json")
    assert status.returncode == 0 and "dev-lobby" in status.stdout

    # the Python fetch does what the image's script did: same jars, same report
    fetched = servers.cli("fetch", "--env", servers.envs["dev"], "--type", "lobby", "--dest", str(tmp_path / "fetched"))
    assert fetched.returncode == 0, fetched.stderr
    report = servers.get("dev-lobby", "/plugins/plugins.txt").text
    assert (tmp_path / "fetched" / "plugins.txt").read_text() == report
    assert (tmp_path / "fetched" / "chat.jar").read_bytes() == build.read_bytes()


#: the README's plugins example: chat is in both sets, economy only in lobby's
README_TYPES = {"lobby": {"plugins": {"chat": "latest", "economy": "1.x"}},
                "survival": {"plugins": {"chat": "latest"}, "depends_on": ["lobby"]}}


def test_fast_track_on_first_use_moves_complete_channels_and_leaves_incomplete_ones(
        tmp_path, docker_client, docker_host, registry):
    """No economy release yet: ``plugin push chat.jar --env dev`` moves survival's channel (its
    set is complete) and exits 0; lobby's channel is not touched at all, until economy exists."""
    servers = Servers(tmp_path, docker_client, docker_host, registry, types=README_TYPES)
    try:
        build = tmp_path / "chat.jar"
        build.write_bytes(jar("chat first build"))
        pushed = servers.cli("push", str(build), "--env", servers.envs["dev"])
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        out = json.loads(pushed.stdout)
        assert set(out["cycle"]["incomplete"]) == {"lobby"}
        assert "economy" in out["cycle"]["incomplete"]["lobby"] and out["cycle"]["errors"] == []
        dev_lobby, dev_survival = (f"{servers.envs['dev']}-{t}" for t in ("lobby", "survival"))
        assert dev_survival in registry.tags("plugins/chat")
        assert dev_lobby not in registry.tags("plugins/chat")

        # a survival server fetches its complete set; the next fast-track push restarts it
        servers.start("s1", "survival", "dev")
        wait_until(lambda: servers.plugins("s1"), timeout=60, what="survival server up")
        build.write_bytes(jar("chat second build"))
        pushed = servers.cli("push", str(build), "--env", servers.envs["dev"])
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        version = json.loads(pushed.stdout)["version"]
        assert servers.reported("s1") == {"chat": version}
        assert dev_lobby not in registry.tags("plugins/chat")

        # economy's first release completes lobby's set: its channel moves, whole
        eco = tmp_path / "economy.jar"
        eco.write_bytes(jar("economy 1.0.0"))
        assert servers.cli("push", str(eco), "--version", "1.0.0").returncode == 0
        cycled = servers.cli("cycle", "--env", servers.envs["dev"])
        assert cycled.returncode == 0, cycled.stdout + cycled.stderr
        assert json.loads(cycled.stdout)["incomplete"] == {}
        assert dev_lobby in registry.tags("plugins/chat") and dev_lobby in registry.tags("plugins/economy")
        assert servers.store.get("chat", dev_lobby).version == version
    finally:
        servers.cleanup()
