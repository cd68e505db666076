"""Plugin restarts on Docker-host fleets share the fleet's etcd quorum slots.

Three "machines", each a real fleet agent process with its own game-server container (the
image fetches its plugins at start with the shipped ``fetch-plugins.sh`` and reports them over
HTTP). A plugin change and an image rollout of the same service run at the same time; a
monitor samples Docker and etcd the whole time and records every moment more than
``max_unavailable`` servers were down or more than ``max_unavailable`` slots were held.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import uuid
import zipfile
from pathlib import Path

import pytest
import requests
import yaml

from poller.artifacts import FETCH_SCRIPT, uses_fleet
from poller.artifacts.rollout import PluginRollout
from poller.artifacts.store import ArtifactStore
from poller.config import load_config
from poller.registry.client import RegistryClient
from poller.runtime import Runtime
from tests.fixtures.services import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY fetch-plugins.sh /fetch-plugins.sh
COPY www /www
ENV SLIPWAY_PLUGIN_DIR=/www/plugins
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/bin/busybox", "sh", "-c", "/bin/busybox wget -q -O /dev/null http://127.0.0.1:$PORT/plugins/plugins.txt"]
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox sh /fetch-plugins.sh && exec /bin/busybox httpd -f -p $PORT -h /www"]
"""
MACHINES = ["m1", "m2", "m3"]
MAX_UNAVAILABLE = 1


def jar(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", text)
    return buf.getvalue()


class PluginFleet:
    def __init__(self, tmp: Path, docker_client, docker_host: str, registry, etcd_server):
        self.id = uuid.uuid4().hex[:8]
        self.tmp, self.docker, self.docker_host = tmp, docker_client, docker_host
        self.registry, self.etcd = registry, etcd_server
        self.prefix = f"/dc{self.id}"
        # Servers are found by label on the shared Docker engine: an environment of this test's
        # own, so a plugin cycle run by another test at the same time never restarts these.
        self.env = f"production{self.id}"
        self.image = f"{registry.addr}/lobby{self.id}"
        self.ports: dict[str, int] = {}
        self.agents: dict[str, subprocess.Popen] = {}

    def build(self, version: str) -> None:
        ctx = self.tmp / f"img-{version}"
        (ctx / "www").mkdir(parents=True)
        (ctx / "www" / "version").write_text(f"{version}\n")
        (ctx / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
        (ctx / "busybox").chmod(0o755)
        (ctx / "fetch-plugins.sh").write_text(FETCH_SCRIPT.read_text())
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        self.docker.images.build(path=str(ctx), tag=f"{self.image}:{version}", rm=True)
        for line in self.docker.images.push(self.image, tag=version, stream=True, decode=True):
            assert "error" not in line, line

    def name(self, machine: str) -> str:
        return f"slw{self.id}-{machine}-lobby"

    def config(self, machine: str | None) -> Path:
        data = {"registry": {"url": self.registry.addr, "insecure": True},
                "fleet": {"etcd": {"endpoints": [self.etcd.url], "prefix": self.prefix, "timeout": 3},
                          "services": {"lobby": {"image": self.image, "max_unavailable": MAX_UNAVAILABLE,
                                                 "health": {"kind": "docker", "timeout": 30}, "stop_timeout": 1}}},
                "plugins": {"server_types": {"lobby": {"plugins": {"chat": "latest"},
                                                       "max_unavailable": MAX_UNAVAILABLE}},
                            "environments": {self.env: {"production": True}},
                            "probe": {"stop_timeout": 1, "restart_timeout": 30}}}
        if machine:
            data["fleet"]["agent"] = {"machine": machine, "lease_ttl": 3, "interval": 0.5,
                                      "containers": {"lobby": self.name(machine)}}
        path = self.tmp / f"{machine or 'poller'}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start_server(self, machine: str) -> None:
        port = free_port()
        self.ports[machine] = port
        self.docker.containers.run(
            f"{self.image}:1.0.0", name=self.name(machine), detach=True, network_mode="host",
            labels={"slipway.test": self.id, "slipway.server-type": "lobby", "slipway.env": self.env,
                    "slipway.port": str(port), "slipway.machine": machine},
            environment={"PORT": str(port), "SLIPWAY_REGISTRY": self.registry.url,
                         "SLIPWAY_CHANNEL": f"{self.env}-lobby", "SLIPWAY_PLUGINS": "chat"})

    def start_agent(self, machine: str) -> None:
        log = open(self.tmp / f"agent-{machine}.log", "ab")  # noqa: SIM115  (the agent process keeps it)
        self.agents[machine] = subprocess.Popen(
            [sys.executable, "-m", "poller", "--log-format", "text", "agent", "--config", str(self.config(machine))],
            cwd=ROOT, stdout=log, stderr=log,
            env={**os.environ, "DOCKER_HOST": self.docker_host, "PYTHONPATH": str(ROOT)})

    def get(self, machine: str, path: str) -> str | None:
        try:
            r = requests.get(f"http://127.0.0.1:{self.ports[machine]}{path}", timeout=2)
        except requests.RequestException:
            return None
        return r.text if r.ok else None

    def chat(self, machine: str) -> str | None:
        """The chat version the server itself says it runs."""
        text = self.get(machine, "/plugins/plugins.txt")
        return text.split()[1] if text else None

    def answered(self, what, machine: str) -> str:
        """``what(machine)`` once the server answers: a busy machine may be slow to."""
        return wait_until(lambda: what(machine), timeout=30, what=f"{machine} to answer")

    def up(self) -> dict[str, bool]:
        """machine -> its lobby container is running and Docker calls it healthy."""
        out = {m: False for m in MACHINES}
        for c in self.docker.api.containers(all=True, filters={"label": f"slipway.test={self.id}"}):
            name = c["Names"][0].lstrip("/")
            for m in MACHINES:
                if name == self.name(m):
                    out[m] = c["State"] == "running" and "(healthy)" in c["Status"]
        return out

    def versions(self) -> dict[str, str]:
        return {c.name.split("-")[1]: c.attrs["Config"]["Image"].rsplit(":", 1)[1]
                for c in self.docker.containers.list(filters={"label": f"slipway.test={self.id}"})
                if c.name in {self.name(m) for m in MACHINES}}

    def cleanup(self) -> None:
        for p in self.agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.agents.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for c in self.docker.containers.list(all=True, filters={"label": f"slipway.test={self.id}"}):
            c.remove(force=True)


class Monitor(threading.Thread):
    def __init__(self, fleet: PluginFleet):
        super().__init__(daemon=True)
        self.fleet = fleet
        self.violations: list[str] = []
        self.holders_seen: set[str] = set()
        self.worst_down = 0
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            up = self.fleet.up()
            down = sorted(m for m, ok in up.items() if not ok)
            self.worst_down = max(self.worst_down, len(down))
            if len(down) > MAX_UNAVAILABLE:
                self.violations.append(f"{down} down at once")
            slots = [k.rsplit("/", 1)[1] for k in self.fleet.etcd.items(f"{self.fleet.prefix}/slots/lobby/")]
            self.holders_seen.update(slots)
            if len(slots) > MAX_UNAVAILABLE:
                self.violations.append(f"slots held by {slots}")
            self.samples += 1
            self.halt.wait(0.05)


@pytest.fixture
def plugin_fleet(tmp_path, docker_client, docker_host, registry, etcd):  # noqa: F811
    f = PluginFleet(tmp_path, docker_client, docker_host, registry, etcd)
    yield f
    f.cleanup()


def test_plugin_restarts_and_an_image_rollout_share_the_quorum(plugin_fleet):
    f = plugin_fleet
    cfg = load_config(f.config(None))
    store = ArtifactStore(RegistryClient(cfg.registry), "plugins")
    assert uses_fleet(cfg), "the lobby server type shares the lobby fleet service's slots"
    state = Runtime(cfg).fleet
    rollout = PluginRollout(cfg.plugins, store, f.docker, fleet=state)
    store.push("chat", jar("chat 1.0.0"), "1.0.0")
    assert rollout.cycle(f.env).restarted == []  # channel exists; no servers yet
    for version in ("1.0.0", "2.0.0"):
        f.build(version)
    for m in MACHINES:
        f.start_server(m)
    wait_until(lambda: all(f.up().values()), timeout=60, what="every server healthy")
    for m in MACHINES:
        f.start_agent(m)
    wait_until(lambda: sorted(state.current().get("lobby", {})) == MACHINES, timeout=60,
               what="every agent registered")
    monitor = Monitor(f)
    monitor.start()

    # an image switch is under way elsewhere (its agent holds the only slot): no plugin restart
    lease = state.etcd.grant(60)
    assert state.take_slot("lobby", "m9", lease)
    store.push("chat", jar("chat 1.1.0"), "1.1.0")
    held = rollout.cycle(f.env)
    assert held.restarted == [] and held.waiting == ["lobby"], held
    assert {m: f.answered(f.chat, m) for m in MACHINES} == {m: "1.0.0" for m in MACHINES}
    state.release_slot("lobby", "m9")
    state.etcd.revoke(lease)

    # now the plugin restarts and an image rollout of the same service at the same time: plugin
    # cycles run in a thread; the rollout starts while the first plugin restart holds the slot
    restarted: list[str] = []
    errors: list[str] = []
    finished = threading.Event()

    def plugin_cycles() -> None:
        while not finished.is_set():
            try:
                report = rollout.cycle(f.env)
            except Exception as exc:  # noqa: BLE001  (reported below, not swallowed)
                errors.append(repr(exc))
                return
            restarted.extend(report.restarted)
            errors.extend(report.errors)
            if not report.errors and len(report.up_to_date) == len(MACHINES):
                finished.set()
            finished.wait(0.2)

    cycles = threading.Thread(target=plugin_cycles, daemon=True)
    cycles.start()
    wait_until(lambda: any(h.endswith(".plugins") for h in state.slots("lobby")), timeout=60,
               what="a plugin restart holding a slot")
    state.start_rollout("lobby", "2.0.0")
    wait_until(lambda: finished.is_set() or errors, timeout=240, what="every server on chat 1.1.0")
    finished.set()
    cycles.join(60)
    assert errors == []
    wait_until(lambda: (state.rollout("lobby").state == "done"), timeout=180, what="the image rollout done")
    wait_until(lambda: all(f.up().values()) and f.versions() == {m: "2.0.0" for m in MACHINES},
               timeout=60, what="every server healthy on 2.0.0")
    assert {m: f.answered(f.chat, m) for m in MACHINES} == {m: "1.1.0" for m in MACHINES}
    version = {m: f.answered(lambda m: f.get(m, "/version"), m).strip() for m in MACHINES}
    assert version == {m: "2.0.0" for m in MACHINES}
    monitor.halt.set()
    monitor.join(10)
    assert monitor.samples > 20
    assert monitor.violations == [], sorted(set(monitor.violations))[:10]
    assert monitor.worst_down == 1  # restarts did happen, one at a time
    assert not state.slots("lobby")
    # both kinds of holder took the slot during the run
    assert restarted and any(h.endswith(".plugins") for h in monitor.holders_seen), monitor.holders_seen
    assert any(h in MACHINES for h in monitor.holders_seen), monitor.holders_seen
