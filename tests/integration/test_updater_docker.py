"""The updater end to end on a Docker host: real registry (real pushes, digests move when a tag
moves), real Docker engine (containers replaced with their configuration kept), a real HTTP
server for the reload call."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from poller.approvals import ApprovalQueue
from poller.config import parse_config
from poller.http import RequestCounter
from poller.runtime import Runtime
from poller.store import Store
from poller.updater.build import build_engine
from poller.updater.history import UpdateHistory
from poller.updater.target_factory import TargetFactory
from tests.fixtures.services import wait_until
from tests.integration.updater_support import build_local_image, engine_for, push_base, reload_server, retag

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REPO = "game"


@pytest.fixture(scope="session")
def base_image(docker_client, tmp_path_factory):
    return build_local_image(docker_client, tmp_path_factory.mktemp("img"))


@pytest.fixture
def containers(docker_client):
    names: list[str] = []
    yield names
    for name in names:
        for n in (name, f"{name}-slipway-old"):
            try:
                docker_client.containers.get(n).remove(force=True, v=True)
            except Exception:
                pass


def run(docker_client, containers, name_hint: str, image: str, **kw):
    name = f"slipway-{name_hint}-{secrets.token_hex(3)}"
    containers.append(name)
    return docker_client.containers.run(image, name=name, detach=True, **kw)


def image_of(docker_client, name: str) -> str:
    return docker_client.containers.get(name).attrs["Config"]["Image"]


def config(tmp_path, registry, deployments, docker_host, **updates) -> dict:
    return {"registry": {"url": registry.addr, "insecure": True},
            "store": {"path": str(tmp_path / "slipway.db")}, "api": {"listen": None, "token": "t0ken"},
            "docker": {"base_url": docker_host},
            "updates": {"deployments": deployments, **updates}}


def deployment(name, container, policy, registry, **extra) -> dict:
    return {"name": name, "image": f"{registry.addr}/{REPO}", "policy": policy,
            "target": {"docker": {"container": container}}, **extra}


def poller(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poller", *args], cwd=ROOT, text=True,
                          capture_output=True, env=dict(os.environ))


def test_staging_digest_change_updates_staging_only(tmp_path, registry, docker_client, docker_host,
                                                    base_image, containers):
    d1 = push_base(docker_client, registry, REPO, "staging")
    retag(registry, REPO, "staging", "1.0.0", label="1.0.0")
    vol = f"slipway-test-{secrets.token_hex(3)}"
    staging = run(docker_client, containers, "staging", f"{registry.addr}/{REPO}:staging@{d1}",
                  environment={"GAME_MODE": "staging"}, labels={"team": "ops"},
                  ports={"7777/tcp": ("127.0.0.1", None)}, volumes={vol: {"bind": "/data", "mode": "rw"}},
                  restart_policy={"Name": "unless-stopped"})
    staging.exec_run(["/bin/busybox", "sh", "-c", "echo saved > /data/state"])
    port_before = docker_client.api.inspect_container(staging.id)["NetworkSettings"]["Ports"]["7777/tcp"]
    prod = run(docker_client, containers, "prod", f"{registry.addr}/{REPO}:1.0.0")
    counter = RequestCounter()
    data = config(tmp_path, registry, [
        deployment("staging", staging.name, "digest", registry, tag="staging"),
        deployment("prod", prod.name, "minor", registry)], docker_host)
    engine, _ = engine_for(data, tmp_path / "slipway.db", counter=counter)

    # Nothing moved: one HEAD for the mutable tag and one tag listing, for both deployments.
    out = {o.deployment: o.action for o in engine.cycle()}
    assert out == {"staging": "up-to-date", "prod": "up-to-date"}
    assert counter.total() == 2

    d2 = retag(registry, REPO, "staging", "staging", label="second staging build")
    assert d2 != d1
    outcomes = {o.deployment: o for o in engine.cycle()}
    assert outcomes["staging"].action == "updated", outcomes["staging"]
    assert outcomes["prod"].action == "up-to-date"
    assert image_of(docker_client, staging.name) == f"{registry.addr}/{REPO}:staging@{d2}"
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:1.0.0"

    # The replacement kept name, env, labels, port, volume (with its data) and restart policy.
    new = docker_client.containers.get(staging.name)
    assert new.id != staging.id and new.status == "running"
    assert "GAME_MODE=staging" in new.attrs["Config"]["Env"]
    assert new.attrs["Config"]["Labels"]["team"] == "ops"
    assert new.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert new.attrs["NetworkSettings"]["Ports"]["7777/tcp"] == port_before  # same host port
    assert new.exec_run(["/bin/busybox", "cat", "/data/state"]).output == b"saved\n"
    assert not [c for c in docker_client.containers.list(all=True) if c.name.endswith("-slipway-old")
                and c.name.startswith(staging.name)]

    # The audit says what, from where to where, why.
    rec = UpdateHistory(engine.store).list(deployment="staging")[0]
    assert (rec.status, rec.from_ref, rec.to_ref) == ("succeeded", f"staging@{d1}", f"staging@{d2}")
    assert rec.policy == "digest:staging" and "tag now points at" in rec.reason and rec.approved_by is None

    # And the next cycle is quiet again.
    counter.reset()
    assert {o.action for o in engine.cycle()} == {"up-to-date"}
    assert counter.total() == 2


def test_minor_applies_major_waits_rejected_never_returns_pin_holds(
        tmp_path, registry, docker_client, docker_host, base_image, containers):
    push_base(docker_client, registry, REPO, "1.0.0")
    prod = run(docker_client, containers, "prod", f"{registry.addr}/{REPO}:1.0.0")
    hooks = reload_server(statuses=[500])   # a real webhook receiver; its first answer fails
    data = config(tmp_path, registry, [deployment("prod", prod.name, "major", registry, approval="major")],
                  docker_host)
    data["notify"] = {"webhooks": [
        {"url": f"http://127.0.0.1:{hooks.server_address[1]}/slack", "format": "slack"},
        {"url": f"http://127.0.0.1:{hooks.server_address[1]}/json", "format": "json",
         "events": ["approval.requested"]}]}
    cfg_path = tmp_path / "slipway.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    engine, _ = engine_for(data, tmp_path / "slipway.db")

    # A minor release applies by itself.
    retag(registry, REPO, "1.0.0", "1.1.0", label="1.1.0")
    [o] = engine.cycle()
    assert (o.action, o.to_ref) == ("updated", "1.1.0")
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:1.1.0"

    # A major one waits for a person.
    retag(registry, REPO, "1.0.0", "2.0.0", label="2.0.0")
    [o] = engine.cycle()
    assert o.action == "waiting-approval" and o.to_ref == "2.0.0"
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:1.1.0"

    # Notified: the Slack hook failed once (logged, the cycle went on), the JSON one got it.
    assert [p for _, p in hooks.calls] == ["/slack", "/slack", "/json"]
    assert hooks.bodies[2]["event"] == "approval.requested" and hooks.bodies[2]["deployment"] == "prod"
    assert "1.1.0 -> 2.0.0 waits for approval" in hooks.bodies[1]["text"]
    assert "2.0.0" in hooks.bodies[1]["blocks"][0]["text"]["text"]

    # Restart mid-approval: a new process (the CLI) and new objects on the same store file.
    status = json.loads(poller("updates", "status", "-c", str(cfg_path), "--json").stdout)
    [pending] = status["approvals"]
    assert (pending["subject"], pending["from_version"], pending["to_version"]) == ("prod", "1.1.0", "2.0.0")
    del engine
    engine, _ = engine_for(data, tmp_path / "slipway.db")
    [o] = engine.cycle()
    assert o.action == "waiting-approval"
    assert [a.id for a in ApprovalQueue(Store(tmp_path / "slipway.db")).list()] == [pending["id"]]

    res = poller("updates", "approve", str(pending["id"]), "-c", str(cfg_path), "--by", "alice")
    assert res.returncode == 0, res.stderr
    [o] = engine.cycle()
    assert (o.action, o.to_ref) == ("updated", "2.0.0")
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:2.0.0"
    rec = UpdateHistory(engine.store).list(deployment="prod")[0]
    assert (rec.from_ref, rec.to_ref, rec.approved_by, rec.status) == ("1.1.0", "2.0.0", "alice", "succeeded")
    assert ApprovalQueue(engine.store).get(pending["id"]).status == "applied"

    # Rejected through the HTTP API: never proposed again.
    retag(registry, REPO, "1.0.0", "3.0.0", label="3.0.0")
    [o] = engine.cycle()
    assert o.action == "waiting-approval"
    from poller.api import create_app
    from poller.config import parse_config
    from poller.runtime import Runtime

    app = create_app(Runtime(config=parse_config(data, file="t", env={}), store=engine.store))
    client = app.test_client()
    appr_id = int(o.detail.split()[-1])
    resp = client.post(f"/api/v1/approvals/{appr_id}/reject", json={"by": "bob"},
                       headers={"Authorization": "Bearer t0ken"})
    assert resp.status_code == 200 and resp.json["status"] == "rejected"
    for _ in range(2):
        [o] = engine.cycle()
        assert o.action == "up-to-date"
    assert ApprovalQueue(engine.store).list() == []
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:2.0.0"

    # Pinned never moves, even to an auto-applicable minor; unpinning lets it go.
    resp = client.post("/api/v1/updates/deployments/prod/pin", json={"version": "2.0.0", "by": "carol"},
                       headers={"Authorization": "Bearer t0ken"})
    assert resp.status_code == 200
    retag(registry, REPO, "1.0.0", "2.1.0", label="2.1.0")
    for _ in range(2):
        [o] = engine.cycle()
        assert o.action == "pinned" and "carol" in o.detail
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:2.0.0"
    assert client.get("/api/v1/updates").json["deployments"][0]["pinned"] == "2.0.0"
    assert poller("updates", "unpin", "prod", "-c", str(cfg_path)).returncode == 0
    [o] = engine.cycle()
    assert (o.action, o.to_ref) == ("updated", "2.1.0")

    hooks.shutdown()
    assert any(b.get("text", "").endswith("1.1.0 -> 2.0.0 succeeded") for b in hooks.bodies if isinstance(b, dict))

    # poller status shows tracked images and the last updates.
    text = poller("status", "-c", str(cfg_path)).stdout
    assert "TRACKED IMAGES" in text and f"{registry.addr}/{REPO}" in text
    assert "LAST UPDATES" in text and "carol" not in text
    assert any(line.split()[1:4] == ["prod", "2.0.0", "2.1.0"] for line in text.splitlines()
               if line.strip() and line.split()[0].isdigit())


class _EngineRelay:
    """A second Docker engine address: a unix socket relaying byte for byte to the real engine,
    counting the connections it carries (so a test can tell which address a process used)."""

    def __init__(self, path: Path, engine_socket: str):
        import socket
        import threading

        self.path, self.engine, self.connections = path, engine_socket, 0
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(16)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="engine-relay", daemon=True)
        self._thread.start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        import socket

        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept(); a close alone would not
        except OSError:
            pass
        self._server.close()
        self._thread.join(5)


def test_updates_once_acts_on_the_engine_docker_host_names(tmp_path, registry, docker_client, docker_host,
                                                           base_image, containers):
    """No ``docker:`` key: ``poller updates once`` uses DOCKER_HOST, like the docker CLI would."""
    assert docker_host.startswith("unix://")
    relay = _EngineRelay(tmp_path / "other-engine.sock", docker_host[len("unix://"):])
    try:
        d1 = push_base(docker_client, registry, REPO, "staging")
        box = run(docker_client, containers, "dockerhost", f"{registry.addr}/{REPO}:staging@{d1}")
        d2 = retag(registry, REPO, "staging", "staging", label="built after the container started")
        data = config(tmp_path, registry, [deployment("box", box.name, "digest", registry, tag="staging")],
                      docker_host)
        del data["docker"]
        cfg_path = tmp_path / "slipway.yaml"
        cfg_path.write_text(yaml.safe_dump(data))
        res = subprocess.run([sys.executable, "-m", "poller", "updates", "once", "-c", str(cfg_path), "--json"],
                             cwd=ROOT, text=True, capture_output=True,
                             env={**os.environ, "DOCKER_HOST": f"unix://{relay.path}"}, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        [o] = json.loads(res.stdout)
        assert (o["action"], o["to_ref"]) == ("updated", f"staging@{d2}"), o
        assert relay.connections > 0, "the update went to another engine than DOCKER_HOST's"
        assert image_of(docker_client, box.name) == f"{registry.addr}/{REPO}:staging@{d2}"
    finally:
        relay.close()


def test_first_pass_leaves_a_container_already_running_the_wanted_digest(
        tmp_path, registry, docker_client, docker_host, base_image, containers):
    """Started from ``repo:staging`` (no digest in its config) while ``staging`` is that digest:
    the first ``updates once`` must not recreate it; a real move still does."""
    push_base(docker_client, registry, REPO, "staging")
    box = run(docker_client, containers, "firstpass", f"{registry.addr}/{REPO}:staging")
    cfg_path = tmp_path / "slipway.yaml"
    cfg_path.write_text(yaml.safe_dump(config(
        tmp_path, registry, [deployment("box", box.name, "digest", registry, tag="staging")], docker_host)))
    res = poller("updates", "once", "-c", str(cfg_path), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    [o] = json.loads(res.stdout)
    assert o["action"] == "up-to-date", o
    assert docker_client.containers.get(box.name).id == box.id

    d2 = retag(registry, REPO, "staging", "staging", label="a real new build")
    res = poller("updates", "once", "-c", str(cfg_path), "--json")
    [o] = json.loads(res.stdout)
    assert (o["action"], o["to_ref"]) == ("updated", f"staging@{d2}"), o
    assert docker_client.containers.get(box.name).id != box.id


def test_minor_policy_with_major_approval_surfaces_the_major_while_minors_keep_flowing(
        tmp_path, registry, docker_client, docker_host, base_image, containers):
    """The README's production pair (``policy: minor``, ``approval: major``) on a Docker host,
    driven through the CLI: a new major waits for a person, minors still arrive meanwhile, and
    once approved the deployment follows the new major."""
    push_base(docker_client, registry, REPO, "1.0.0")
    prod = run(docker_client, containers, "semver", f"{registry.addr}/{REPO}:1.0.0")
    cfg_path = tmp_path / "slipway.yaml"
    cfg_path.write_text(yaml.safe_dump(config(
        tmp_path, registry, [deployment("prod", prod.name, "minor", registry, approval="major")], docker_host)))

    def once() -> dict:
        res = poller("updates", "once", "-c", str(cfg_path), "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        [o] = json.loads(res.stdout)
        return o

    def pending() -> list[dict]:
        res = poller("approvals", "list", "-c", str(cfg_path), "--json")
        assert res.returncode == 0, res.stderr
        return [(a["subject"], a["to_version"]) for a in json.loads(res.stdout)]

    retag(registry, REPO, "1.0.0", "1.1.0", label="1.1.0")
    retag(registry, REPO, "1.0.0", "2.0.0", label="2.0.0")
    o = once()
    assert (o["action"], o["to_ref"]) == ("updated", "1.1.0"), o
    assert "2.0.0: waiting-approval" in o["detail"]
    assert pending() == [("prod", "2.0.0")]
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:1.1.0"

    retag(registry, REPO, "1.0.0", "1.2.1", label="1.2.1")
    o = once()
    assert (o["action"], o["to_ref"]) == ("updated", "1.2.1"), o
    o = once()
    assert (o["action"], o["to_ref"]) == ("waiting-approval", "2.0.0"), o
    assert pending() == [("prod", "2.0.0")]

    [appr] = json.loads(poller("approvals", "list", "-c", str(cfg_path), "--json").stdout)
    assert poller("approvals", "approve", str(appr["id"]), "-c", str(cfg_path)).returncode == 0
    o = once()
    assert (o["action"], o["to_ref"]) == ("updated", "2.0.0"), o
    assert image_of(docker_client, prod.name) == f"{registry.addr}/{REPO}:2.0.0"

    retag(registry, REPO, "1.0.0", "2.1.0", label="2.1.0")
    assert (once()["action"], image_of(docker_client, prod.name)) == ("updated", f"{registry.addr}/{REPO}:2.1.0")
    assert pending() == []

    # a newer major supersedes the request nobody answered: one pending approval, the newest
    retag(registry, REPO, "1.0.0", "3.0.0", label="3.0.0")
    assert (once()["action"], pending()) == ("waiting-approval", [("prod", "3.0.0")])
    retag(registry, REPO, "1.0.0", "4.0.0", label="4.0.0")
    assert (once()["to_ref"], pending()) == ("4.0.0", [("prod", "4.0.0")])


#: a health check whose first probe comes after an hour: the container stays ``starting``
NEVER_HEALTHY = {"test": ["CMD", "/bin/busybox", "true"], "interval": 3600 * 10**9}


def test_container_that_never_turns_healthy_does_not_delay_another_images_update(
        tmp_path, registry, docker_client, docker_host, base_image, containers):
    """``poller run``'s periodic job replaces a container whose health check never passes (its
    deadline is the default 300 s); a release of another image pushed meanwhile is applied
    within the interval and a small margin, not after the first one's deadline."""
    interval, margin = 2.0, 6.0
    push_base(docker_client, registry, "stuck", "1.0.0")
    push_base(docker_client, registry, "fast", "1.0.0")
    stuck = run(docker_client, containers, "stuck", f"{registry.addr}/stuck:1.0.0", healthcheck=NEVER_HEALTHY,
                stop_signal="SIGKILL")
    fast = run(docker_client, containers, "fast", f"{registry.addr}/fast:1.0.0", stop_signal="SIGKILL")
    data = config(tmp_path, registry, [
        {**deployment("stuck", stuck.name, "patch", registry), "image": f"{registry.addr}/stuck"},
        {**deployment("fast", fast.name, "patch", registry), "image": f"{registry.addr}/fast"}],
        docker_host, interval=interval)
    runtime = Runtime(parse_config(data, file="t.yaml", env={}), store=Store(tmp_path / "slipway.db"))
    [(_, _, job)] = runtime.periodic_jobs()
    stop = threading.Event()

    def scheduler():               # what ``poller run`` does with the job
        while not stop.is_set():
            job()
            stop.wait(interval)

    threading.Thread(target=scheduler, daemon=True).start()
    try:
        retag(registry, "stuck", "1.0.0", "1.0.1", label="1.0.1")
        wait_until(lambda: image_of(docker_client, stuck.name) == f"{registry.addr}/stuck:1.0.1", 60,
                   what="the stuck container replaced")
        retag(registry, "fast", "1.0.0", "1.0.1", label="1.0.1")
        pushed = time.monotonic()
        wait_until(lambda: image_of(docker_client, fast.name) == f"{registry.addr}/fast:1.0.1",
                   interval + margin, what="the other image's release applied while the first container "
                                           "is not healthy")
        print(f"push to replacement: {time.monotonic() - pushed:.1f}s (interval {interval:.0f}s)")
        history = lambda name: [r.status for r in UpdateHistory(Store(tmp_path / "slipway.db")).list(  # noqa: E731
            deployment=name)]
        wait_until(lambda: history("fast") == ["succeeded"], 30, what="the other update recorded succeeded")
        assert history("stuck") == ["running"]
        assert docker_client.containers.get(f"{stuck.name}-slipway-old").status == "exited"
    finally:
        stop.set()


def test_container_not_healthy_by_its_deadline_is_reported_once_and_the_old_one_put_back(
        tmp_path, registry, docker_client, docker_host, base_image, containers):
    push_base(docker_client, registry, "stuck", "1.0.0")
    retag(registry, "stuck", "1.0.0", "1.0.1", label="1.0.1")
    stuck = run(docker_client, containers, "stuck", f"{registry.addr}/stuck:1.0.0", healthcheck=NEVER_HEALTHY,
                stop_signal="SIGKILL")
    data = config(tmp_path, registry, [{**deployment("stuck", stuck.name, "patch", registry),
                                        "image": f"{registry.addr}/stuck"}], docker_host)
    cfg = parse_config(data, file="t.yaml", env={})
    eng = build_engine(cfg, Store(tmp_path / "slipway.db"),
                       targets=TargetFactory(cfg.updates, docker_base_url=docker_host, rollout_timeout=3))
    seen: list[str] = []
    try:
        [o] = eng.cycle(settle=False)
        assert (o.action, o.to_ref) == ("rolling", "1.0.1"), o
        assert image_of(docker_client, stuck.name) == f"{registry.addr}/stuck:1.0.1"

        def failed_once() -> bool:
            seen.extend(o.action for o in eng.cycle(settle=False))
            return "failed" in seen
        wait_until(failed_once, 30, interval=0.5, what="the container past its deadline reported")
        for _ in range(3):
            seen.extend(o.action for o in eng.cycle(settle=False))
        assert seen.count("failed") == 1 and seen[-1] == "held", seen
        [rec] = UpdateHistory(eng.store).list()
        assert rec.status == "failed" and "not healthy after 3s" in rec.error, rec
        back = docker_client.containers.get(stuck.name)
        assert (back.id, back.status) == (stuck.id, "running")
        assert image_of(docker_client, stuck.name) == f"{registry.addr}/stuck:1.0.0"
        assert not [c for c in docker_client.containers.list(all=True) if c.name.startswith(stuck.name)
                    and c.id != stuck.id]
    finally:
        eng.close()
