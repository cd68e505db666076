"""Fleet rollouts with real agents (separate processes), real etcd, real containers.

Each "machine" is an agent process with its own containers on the shared Docker engine,
labelled with this test's id. A monitor thread samples Docker and etcd the whole time and
records every violation of the rules; the test asserts on that record and on the end state,
never on the agents' logs (logs are only used to know an outage has been noticed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.fixtures.fleet import Namespace, netns_available
from tests.fixtures.services import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

BUSYBOX = "/bin/busybox"
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY www /www
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""
SERVICES = {"db": {"max_unavailable": 1}, "api": {"max_unavailable": 2, "depends_on": ["db"]}}


def build_images(docker_client, tmp: Path, registry, versions: dict[str, bool]) -> None:
    """Push <service>:<version> for each service; ``versions`` maps version -> healthy."""
    for svc in SERVICES:
        for version, healthy in versions.items():
            ctx = tmp / "img" / f"{svc}-{version}"
            (ctx / "www").mkdir(parents=True)
            (ctx / "busybox").write_bytes(Path(BUSYBOX).read_bytes())
            (ctx / "busybox").chmod(0o755)
            (ctx / "www" / "index.html").write_text(f"{svc} {version}\n")
            if healthy:
                (ctx / "www" / "health").write_text("ok\n")
            (ctx / "Dockerfile").write_text(DOCKERFILE)
            tag = f"{registry.addr}/{svc}:{version}"
            docker_client.images.build(path=str(ctx), tag=tag, rm=True)
            for line in docker_client.images.push(f"{registry.addr}/{svc}", tag=version, stream=True,
                                                  decode=True):
                assert "error" not in line, line
            if version != "1.0.0":  # agents must pre-pull these themselves
                docker_client.images.remove(tag)


class Fleet:
    def __init__(self, tmp: Path, docker_client, docker_host: str, registry, etcd_server):
        self.id = uuid.uuid4().hex[:8]
        self.tmp, self.docker, self.docker_host = tmp, docker_client, docker_host
        self.registry, self.etcd = registry, etcd_server
        self.agents: dict[str, subprocess.Popen] = {}
        self.dead: set[str] = set()
        self.namespaces: dict[str, Namespace] = {}
        self.machines: list[str] = []
        self.health = {s: {"kind": "docker", "timeout": 30} for s in SERVICES}

    def name(self, machine: str, svc: str) -> str:
        return f"slw{self.id}-{machine}-{svc}"

    def config(self, machine: str, endpoint: str) -> Path:
        services = {s: {"image": f"{self.registry.addr}/{s}", "health": self.health[s],
                        "stop_timeout": 1,
                        **extra} for s, extra in SERVICES.items()}
        data = {"registry": {"url": self.registry.addr, "insecure": True},
                "fleet": {"etcd": {"endpoints": [endpoint], "prefix": f"/dc{self.id}", "timeout": 3},
                          "services": services,
                          "agent": {"machine": machine, "lease_ttl": 3, "interval": 0.5,
                                    "containers": {s: self.name(machine, s) for s in SERVICES}}}}
        path = self.tmp / f"{machine}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def add_machine(self, machine: str, version: str = "1.0.0", **run) -> None:
        """``run``: per service, extra ``containers.run`` arguments (``{svc: {...}}``)."""
        self.machines.append(machine)
        for svc in SERVICES:
            self.docker.containers.run(f"{self.registry.addr}/{svc}:{version}", name=self.name(machine, svc),
                                       detach=True, labels={"slipway.test": self.id, "machine": machine,
                                                            "service": svc}, **run.get(svc, {}))

    def start_agent(self, machine: str, *, netns: Namespace | None = None) -> None:
        endpoint = f"http://127.0.0.1:{netns.port}" if netns else self.etcd.url
        cmd = [sys.executable, "-m", "poller", "--log-format", "text", "agent",
               "--config", str(self.config(machine, endpoint))]
        if netns:
            cmd = ["ip", "netns", "exec", netns.name, *cmd]
            self.namespaces[machine] = netns
        log = open(self.tmp / f"agent-{machine}.log", "ab")
        self.agents[machine] = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                                env={**os.environ, "DOCKER_HOST": self.docker_host,
                                                     "PYTHONPATH": str(ROOT)})
        self.dead.discard(machine)

    def kill_agent(self, machine: str) -> None:
        self.dead.add(machine)
        self.agents[machine].kill()
        self.agents[machine].wait(10)

    def log(self, machine: str) -> str:
        return (self.tmp / f"agent-{machine}.log").read_text(errors="replace")

    def cli(self, *args: str) -> str:
        res = subprocess.run([sys.executable, "-m", "poller", "fleet", *args, "--config",
                              str(self.config("m1", self.etcd.url))], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout

    # -- what is really there ---------------------------------------------------------
    def containers(self) -> dict[tuple[str, str], dict]:
        """(machine, service) -> {version, up} for the service's container (not the -old one)."""
        out = {}
        for c in self.docker.api.containers(all=True, filters={"label": f"slipway.test={self.id}"}):
            name = c["Names"][0].lstrip("/")
            labels = c["Labels"]
            if name != self.name(labels["machine"], labels["service"]):
                continue
            up = c["State"] == "running" and "(healthy)" in c["Status"]
            out[(labels["machine"], labels["service"])] = {"version": c["Image"].rsplit(":", 1)[1], "up": up,
                                                           "status": c["Status"]}
        return out

    def versions(self, svc: str, *, healthy: bool = True) -> dict[str, str]:
        """The version each machine's container runs (``healthy``: only healthy, running ones)."""
        return {m: info["version"] for (m, s), info in self.containers().items()
                if s == svc and (info["up"] or not healthy)}

    def etcd_view(self) -> dict:
        return self.etcd.items(f"/dc{self.id}/")

    def rollout(self, svc: str) -> dict | None:
        return self.etcd_view().get(f"/dc{self.id}/rollout/{svc}")

    def cleanup(self) -> None:
        for p in self.agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.agents.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in self.namespaces.values():
            ns.close()
        for c in self.docker.containers.list(all=True, filters={"label": f"slipway.test={self.id}"}):
            c.remove(force=True)


class Monitor(threading.Thread):
    """Samples Docker and etcd until stopped; records every broken rule."""

    def __init__(self, fleet: Fleet, new: str):
        super().__init__(daemon=True)
        self.fleet, self.new = fleet, new
        self.violations: list[str] = []
        self.samples = 0
        self.halt = threading.Event()
        self.frozen: dict[str, str] = {}  # unreachable machine -> the version it must keep

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.sample()
            except Exception as exc:  # etcd is stopped on purpose for a while
                if "Connection" not in type(exc).__name__ and "Connection" not in str(exc):
                    self.violations.append(f"monitor error: {exc!r}")
            self.halt.wait(0.1)

    def sample(self) -> None:
        f = self.fleet
        cont = f.containers()
        try:
            view: dict | None = f.etcd_view()
        except requests.ConnectionError:  # etcd is stopped on purpose for a while: Docker still counts
            view = None
        for svc, rules in SERVICES.items():
            down = [m for (m, s), info in cont.items()
                    if s == svc and not info["up"] and m not in f.dead]
            missing = [m for m in f.machines if (m, svc) not in cont and m not in f.dead]
            if len(down) + len(missing) > rules["max_unavailable"]:
                # what each one was doing, what etcd said: enough to tell a broken quorum from noise
                doing = ", ".join(f"{m}: {cont[(m, svc)]['status']}" if (m, svc) in cont else f"{m}: missing"
                                  for m in sorted(down + missing))
                slots = sorted(k.rsplit("/", 1)[1] for k in view or {} if k.startswith(f"/dc{f.id}/slots/{svc}/"))
                state = ((view or {}).get(f"/dc{f.id}/rollout/{svc}") or {}).get("state")
                self.violations.append(f"{svc}: {sorted(down + missing)} down at once ({doing}; "
                                       f"slots {slots}; rollout {state})")
        for m, version in self.frozen.items():
            for svc in SERVICES:
                info = cont.get((m, svc))
                if info is None or info["version"] != version or not info["up"]:
                    self.violations.append(f"unreachable {m} was touched: {svc} {info}")
        if view is None:
            return
        self.samples += 1
        for svc, rules in SERVICES.items():
            slots = [k for k in view if k.startswith(f"/dc{f.id}/slots/{svc}/")]
            if len(slots) > rules["max_unavailable"]:
                self.violations.append(f"{svc}: {len(slots)} slots held")
        # order: an api container on the new version only once db's rollout is done
        if any(s == "api" and info["version"] == self.new for (m, s), info in cont.items()):
            db = view.get(f"/dc{f.id}/rollout/db")
            if not db or db.get("state") != "done":
                self.violations.append(f"api switched before db was done (db rollout: {db})")


@pytest.fixture
def fleet(tmp_path, docker_client, docker_host, registry, etcd):
    f = Fleet(tmp_path, docker_client, docker_host, registry, etcd)
    yield f
    f.cleanup()


def all_current(fleet: Fleet, machines: list[str], version: str) -> bool:
    view = fleet.etcd_view()
    return all(view.get(f"/dc{fleet.id}/current/{s}/{m}", {}).get("version") == version
               for s in SERVICES for m in machines)


@pytest.mark.skipif(not netns_available(), reason="cannot create network namespaces here")
def test_rollout_survives_killed_agent_etcd_outage_and_unreachable_machine(fleet, docker_client, registry,
                                                                           tmp_path):
    build_images(docker_client, tmp_path, registry, {"1.0.0": True, "2.0.0": True})
    machines = ["m1", "m2", "m3", "m4"]
    for m in machines:
        fleet.add_machine(m)
    wait_until(lambda: len([i for i in fleet.containers().values() if i["up"]]) == 8, timeout=60,
               what="all containers healthy")
    for m in ("m1", "m2", "m3"):
        fleet.start_agent(m)
    fleet.start_agent("m4", netns=Namespace(tmp_path, fleet.etcd.client_port))
    wait_until(lambda: all_current(fleet, machines, "1.0.0"), timeout=60, what="every agent registered")

    # m4 loses its network: its lease (3 s) expires and it drops out of /current.
    fleet.namespaces["m4"].link(up=False)
    wait_until(lambda: not any("/m4" in k for k in fleet.etcd_view()), timeout=30,
               what="m4 to drop out of etcd")

    monitor = Monitor(fleet, "2.0.0")
    monitor.frozen["m4"] = "1.0.0"
    monitor.start()
    fleet.cli("rollout", "api", "2.0.0", "db", "2.0.0")

    # kill an agent mid-rollout, once the first machine has switched db
    wait_until(lambda: "2.0.0" in fleet.versions("db").values(), timeout=120, what="a first db switch")
    victim = next(m for m in ("m2", "m3", "m1") if fleet.versions("db").get(m) != "2.0.0")
    fleet.kill_agent(victim)

    # etcd goes away; wait until the live agents noticed, then bring it back
    marks = {m: len(fleet.log(m)) for m in ("m1", "m2", "m3") if m not in fleet.dead}
    fleet.etcd.stop()
    wait_until(lambda: all("agent.step_failed" in fleet.log(m)[n:] or "agent.etcd_unreachable" in
                           fleet.log(m)[n:] for m, n in marks.items()),
               timeout=60, what="agents to notice the etcd outage")
    fleet.etcd.start()
    fleet.start_agent(victim)

    reachable = ["m1", "m2", "m3"]
    wait_until(lambda: (fleet.rollout("db") or {}).get("state") == "done", timeout=180, what="db done")
    wait_until(lambda: (fleet.rollout("api") or {}).get("state") == "done", timeout=180, what="api done")
    # Docker's health of the moment may lag etcd (a busy machine): wait for it, then compare
    wait_until(lambda: all({m: fleet.versions(svc).get(m) for m in reachable} == {m: "2.0.0" for m in reachable}
                           for svc in SERVICES), timeout=60, what="the reachable machines healthy on 2.0.0")
    assert fleet.versions("db", healthy=False)["m4"] == "1.0.0"
    status = fleet.cli("status", "--json")
    assert '"deploy": []' in status

    # m4 comes back: it starts the version most of its peers run, not the one it had
    monitor.frozen.clear()
    fleet.namespaces["m4"].link(up=True)
    wait_until(lambda: all_current(fleet, machines, "2.0.0"), timeout=120, what="m4 on the majority version")
    wait_until(lambda: all(fleet.versions(svc) == {m: "2.0.0" for m in machines} for svc in SERVICES),
               timeout=60, what="every container healthy on 2.0.0")
    monitor.halt.set()
    monitor.join(10)
    assert monitor.samples > 20
    assert monitor.violations == [], sorted(set(monitor.violations))[:10]


def test_failed_health_check_stops_the_rollout_and_keeps_the_old_version(fleet, docker_client, registry,
                                                                         tmp_path):
    build_images(docker_client, tmp_path, registry, {"1.0.0": True, "3.0.0": False})
    machines = ["m1", "m2", "m3"]
    for m in machines:
        fleet.add_machine(m)
    # the monitor counts a container whose first health check has not passed yet as down
    wait_until(lambda: len([i for i in fleet.containers().values() if i["up"]]) == 6, timeout=60,
               what="all containers healthy")
    for m in machines:
        fleet.start_agent(m)
    wait_until(lambda: all_current(fleet, machines, "1.0.0"), timeout=60, what="every agent registered")
    monitor = Monitor(fleet, "3.0.0")
    monitor.start()
    fleet.cli("rollout", "db", "3.0.0", "api", "3.0.0")
    wait_until(lambda: (fleet.rollout("db") or {}).get("state") == "failed", timeout=120, what="db failed")
    ro = fleet.rollout("db")
    assert ro["detail"]["failed_on"] in machines and "unhealthy" in ro["detail"]["error"]
    wait_until(lambda: all_current(fleet, machines, "1.0.0") and not any(
        "/slots/" in k for k in fleet.etcd_view()), timeout=60, what="the failed machine back on 1.0.0")
    # api waits behind the failed db rollout; aborting it leaves everything where it is
    assert (fleet.rollout("api") or {}).get("state") == "active"
    fleet.cli("abort", "api")
    assert fleet.rollout("api")["state"] == "aborted"
    # Docker settles a moment after etcd says current: wait for every container to be up.
    wait_until(lambda: all(fleet.versions(svc) == {m: "1.0.0" for m in machines} for svc in SERVICES),
               timeout=60, what="every machine running 1.0.0 of every service")
    monitor.halt.set()
    monitor.join(10)
    assert monitor.violations == [], sorted(set(monitor.violations))[:10]


def test_an_agent_frozen_mid_switch_keeps_its_slot_so_no_second_machine_goes_down(fleet, docker_client,
                                                                                 registry, tmp_path):
    """A busy machine can starve its agent for longer than its lease (3 s here): the machine must
    still count as switching, or a second one goes down while its failing switch is unfinished."""
    build_images(docker_client, tmp_path, registry, {"1.0.0": True, "3.0.0": False})
    machines = ["m1", "m2", "m3"]
    for m in machines:
        fleet.add_machine(m)
    wait_until(lambda: len([i for i in fleet.containers().values() if i["up"]]) == 6, timeout=60,
               what="all containers healthy")
    for m in machines:
        fleet.start_agent(m)
    wait_until(lambda: all_current(fleet, machines, "1.0.0"), timeout=60, what="every agent registered")
    monitor = Monitor(fleet, "3.0.0")
    monitor.start()
    fleet.cli("rollout", "db", "3.0.0")
    slots = f"/dc{fleet.id}/slots/db/"
    holder = wait_until(lambda: next((k[len(slots):] for k in fleet.etcd_view() if k.startswith(slots)), None),
                        timeout=120, what="a machine to take the db slot")
    agent = fleet.agents[holder]
    agent.send_signal(signal.SIGSTOP)
    try:
        # frozen past its lease: it drops out of /current...
        wait_until(lambda: f"/dc{fleet.id}/current/db/{holder}" not in fleet.etcd_view(), timeout=30,
                   what=f"{holder}'s lease to expire")
        # ...and the others get two more passes each (they re-stage every pass) to try for a slot
        others = [m for m in machines if m != holder]

        def staged_at() -> dict[str, float]:
            view = fleet.etcd_view()
            return {m: view.get(f"/dc{fleet.id}/staging/db/{m}", {}).get("at", 0) for m in others}

        def slot_holders() -> list[str]:
            return sorted(k[len(slots):] for k in fleet.etcd_view() if k.startswith(slots))

        for _ in range(2):
            seen = staged_at()
            wait_until(lambda seen=seen: all(at > seen[m] for m, at in staged_at().items())
                       or slot_holders() != [holder]
                       or (fleet.rollout("db") or {}).get("state") != "active", timeout=30,
                       what="another pass of the other agents")
        assert slot_holders() == [holder]
        assert fleet.rollout("db")["state"] == "active"
    finally:
        agent.send_signal(signal.SIGCONT)
    wait_until(lambda: (fleet.rollout("db") or {}).get("state") == "failed", timeout=120, what="db failed")
    assert fleet.rollout("db")["detail"]["failed_on"] == holder
    wait_until(lambda: all_current(fleet, machines, "1.0.0") and not any(
        "/slots/" in k for k in fleet.etcd_view()), timeout=60, what="the frozen machine back on 1.0.0")
    wait_until(lambda: fleet.versions("db") == {m: "1.0.0" for m in machines}, timeout=60,
               what="every db container healthy on 1.0.0")
    monitor.halt.set()
    monitor.join(10)
    assert monitor.violations == [], sorted(set(monitor.violations))[:10]


def test_a_paused_rollout_stages_every_machine_and_switches_none_until_resumed(fleet, docker_client, registry,
                                                                              tmp_path):
    build_images(docker_client, tmp_path, registry, {"1.0.0": True, "2.0.0": True})
    machines = ["m1", "m2"]
    for m in machines:
        fleet.add_machine(m)
        fleet.start_agent(m)
    wait_until(lambda: all_current(fleet, machines, "1.0.0"), timeout=60, what="every agent registered")
    fleet.cli("rollout", "db", "2.0.0", "--paused")
    staged = f"/dc{fleet.id}/staging/db/"
    wait_until(lambda: sorted(k[len(staged):] for k in fleet.etcd_view() if k.startswith(staged)) == machines,
               timeout=60, what="both machines staged (image pulled, ready)")
    assert docker_client.images.get(f"{registry.addr}/db:2.0.0")  # pre-pulled (build_images removed it)
    # Staged, none switched: every container still runs 1.0.0 (a container's health check may be
    # between two probes right now; what matters here is which version it runs).
    assert fleet.versions("db", healthy=False) == {m: "1.0.0" for m in machines}
    assert not any("/slots/" in k for k in fleet.etcd_view())
    fleet.cli("resume", "db")
    wait_until(lambda: (fleet.rollout("db") or {}).get("state") == "done", timeout=120, what="db done")
    wait_until(lambda: fleet.versions("db") == {m: "2.0.0" for m in machines}, timeout=60,
               what="both db containers healthy on 2.0.0")
    assert not any(k.startswith(staged) for k in fleet.etcd_view())


def test_http_health_checks_reach_host_network_containers(fleet, docker_client, registry, tmp_path):
    """Game servers often run with ``network_mode: host``: no published port binding exists, the
    service listens on the host itself. ``health: {kind: http, port: P}`` checks 127.0.0.1:P."""
    build_images(docker_client, tmp_path, registry, {"1.0.0": True, "2.0.0": True})
    ports = {s: free_port() for s in SERVICES}
    fleet.health = {s: {"kind": "http", "port": ports[s], "path": "/health", "timeout": 20} for s in SERVICES}
    fleet.add_machine("m1", **{s: {"network_mode": "host",
                                   "command": ["/bin/busybox", "httpd", "-f", "-p", str(ports[s]), "-h", "/www"]}
                               for s in SERVICES})
    fleet.start_agent("m1")
    wait_until(lambda: all_current(fleet, ["m1"], "1.0.0"), timeout=60, what="the agent registered")
    fleet.cli("rollout", "db", "2.0.0", "api", "2.0.0")

    def ended(svc: str) -> bool:
        return (fleet.rollout(svc) or {}).get("state") in ("done", "failed")

    wait_until(lambda: ended("db") and (fleet.rollout("db")["state"] == "failed" or ended("api")),
               timeout=120, what="the rollouts to end")
    assert fleet.rollout("db")["state"] == fleet.rollout("api")["state"] == "done", fleet.rollout("db")
    assert all_current(fleet, ["m1"], "2.0.0")
    for svc, port in ports.items():
        c = docker_client.containers.get(fleet.name("m1", svc))
        assert c.attrs["HostConfig"]["NetworkMode"] == "host" and c.attrs["Config"]["Image"].endswith(":2.0.0")
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=3).text == f"{svc} 2.0.0\n"
