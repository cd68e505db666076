"""Game servers hot-updated in place: a GameServerSet managed by the real OpenKruiseGame v1.0.0
and Kruise v1.8.0 (toolchain/slipway_toolchain/okg.py), its pods really running on the real node (containerd +
kubelet, toolchain/slipway_toolchain/node.py). Everything is observed on the API server.

* Without ``rollout:`` OKG + Kruise move the pods (the GameServerSet's RollingUpdate with
  ``InPlaceIfPossible``): only the sidecar container restarts, on its new image.
* With ``rollout:`` the GameServerSet's rolling update is ``paused`` (settings.RolloutConfig; OKG
  v1.0.0 ignores ``type: OnDelete``) and Slipway moves the pods one step at a time; the kubelet
  restarts the patched container in place. Update
  priority and opsState are OKG's GameServer fields, synced by OKG onto the pods.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from poller.config import parse_config
from poller.events import RolloutFinished, RolloutProgress, RolloutStarted, UpdateFinished
from poller.rollout.control import RolloutControl
from poller.store import Store
from poller.updater.build import build_engine
from poller.updater.history import UpdateHistory
from poller.updater.target_factory import TargetFactory
from tests.fixtures.cluster import st
from tests.fixtures.services import wait_until
from tests.integration.event_support import Observed
from tests.integration.updater_support import reload_server

pytestmark = [pytest.mark.cluster, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
OWNER, PRIORITY, OPS = "game.kruise.io/owner-gss", "game.kruise.io/gs-update-priority", "game.kruise.io/gs-opsState"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
RELOAD_PORT = 9000
# The sidecar's reload endpoint: busybox httpd runs this CGI; it records each call in the container.
RELOAD_CGI = '#!/bin/busybox sh\necho "$QUERY_STRING" >> /tmp/reloads\nprintf "Content-Type: text/plain\\r\\n\\r\\nreloaded\\n"\n'


def push_images(node, registry, tmp_path: Path, *sidecar_tags: str) -> dict[str, str]:
    """engine:7 and the sidecar tags as runnable FROM-scratch images; returns tag -> digest.

    Each test's images differ (SLIPWAY_TEST): containerd keeps one image per digest, and the
    kubelet reports a container's image under the name the digest was first pulled as, so
    identical images from an earlier test's registry would show up under that registry's name."""
    salt = image_salt(tmp_path, registry)
    node.allow_registry(registry.addr)
    (tmp_path / "reload").write_text(RELOAD_CGI)
    (tmp_path / "keep").write_text("")
    digests = {}
    ref = node.push_image(registry.addr, "engine", "7", {"bin/busybox": Path(BUSYBOX)},
                          ["/bin/busybox", "sh", "-c", "echo engine up; exec /bin/busybox sleep 2147483647"],
                          env=[salt])
    digests["engine:7"] = ref.split("@")[1]
    for tag in sidecar_tags:
        digests[tag] = push_sidecar(node, registry, tmp_path, tag, version=tag)
    return digests


def image_salt(tmp_path: Path, registry) -> str:
    """Differs per test and per run (the registry's port): the node's containerd outlives a session."""
    return f"SLIPWAY_TEST={tmp_path.name}@{registry.addr}"


def push_sidecar(node, registry, tmp_path: Path, tag: str, *, version: str) -> str:
    """The sidecar image (its content set by ``version``) pushed as ``tag``; returns its digest."""
    ref = node.push_image(registry.addr, "sidecar", tag,
                          {"bin/busybox": Path(BUSYBOX), "www/cgi-bin/reload": tmp_path / "reload",
                           "tmp/.keep": tmp_path / "keep"},
                          ["/bin/busybox", "httpd", "-f", "-p", str(RELOAD_PORT), "-h", "/www"],
                          env=[f"VERSION={version}", image_salt(tmp_path, registry)])
    return ref.split("@")[1]


class Watcher:
    """Records every pod event of the namespace (the timeline the assertions read)."""

    def __init__(self, api, namespace: str):
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(10)

    def _run(self):
        from kubernetes import watch

        rv = None
        while not self._stop.is_set():
            w = watch.Watch()
            kwargs = {"resource_version": rv} if rv else {}
            for ev in w.stream(self.core.list_namespaced_pod, self.namespace, timeout_seconds=2, **kwargs):
                pod = self.core.api_client.sanitize_for_serialization(ev["object"])
                rv = pod["metadata"]["resourceVersion"]
                self._record(ev["type"], pod)
                if self._stop.is_set():
                    w.stop()
                    break

    def _record(self, kind: str, pod: dict):
        status = pod.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        with self.lock:
            self.events.append({
                "type": kind, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"],
                "rv": int(pod["metadata"]["resourceVersion"]),
                "spec": {c["name"]: c["image"] for c in pod["spec"]["containers"]},
                "status": {c["name"]: c.get("image") for c in status.get("containerStatuses") or []},
                "ready": ready, "ops": (pod["metadata"].get("labels") or {}).get(OPS)})

    def timeline(self) -> list[dict]:
        with self.lock:
            return sorted(self.events, key=lambda e: e["rv"])


def pods(kube, namespace: str) -> dict[str, dict]:
    items = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["status"].get("containerStatuses") or []}


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def make_gss(kube, node, namespace: str, sidecar: str, engine: str, servers: dict[str, dict], *,
             strategy: dict) -> None:
    """A GameServerSet OKG manages; ``servers`` = {pod name: {PRIORITY: n, OPS: state}} set on
    OKG's GameServer objects (OKG puts them on the pods)."""
    gss = {"apiVersion": "game.kruise.io/v1alpha1", "kind": "GameServerSet",
           "metadata": {"name": "gss", "namespace": namespace},
           "spec": {"replicas": len(servers), "updateStrategy": strategy,
                    "gameServerTemplate": {"spec": {**node.placement(), "terminationGracePeriodSeconds": 1,
                                                    "containers": [{"name": "engine", "image": engine},
                                                                   {"name": "sidecar", "image": sidecar}]}}}}
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(gss))
    wait_until(lambda: len(pods(kube, namespace)) == len(servers) and all(map(ready, pods(kube, namespace).values())),
               timeout=120, what="OKG's game server pods running and ready")
    for name, fields in servers.items():
        spec = {}
        if PRIORITY in fields:
            spec["updatePriority"] = fields[PRIORITY]
        if OPS in fields:
            spec["opsState"] = fields[OPS]
        if spec:
            wait_until(lambda n=name: kube.kubectl("get", "gs", n, "-n", namespace, check=False).returncode == 0,
                       60, what=f"GameServer {name}")
            kube.kubectl("patch", "gs", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))

    def labelled() -> bool:
        current = pods(kube, namespace)
        return all(str(v) == (current[n]["metadata"].get("labels") or {}).get(k)
                   for n, fields in servers.items() for k, v in fields.items())
    wait_until(labelled, 60, what="OKG synced updatePriority/opsState onto the pods")


def set_ops(kube, namespace: str, name: str, ops: str) -> None:
    kube.kubectl("patch", "gs", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"opsState": ops}}))
    wait_until(lambda: (pods(kube, namespace)[name]["metadata"].get("labels") or {}).get(OPS) == ops, 60,
               what=f"{name} opsState {ops} on the pod")


def reloads(kube, namespace: str, name: str) -> list[str]:
    out = kube.kubectl("exec", "-n", namespace, name, "-c", "sidecar", "--", "/bin/busybox", "cat", "/tmp/reloads",
                       check=False)
    return out.stdout.split()


def unavailable_peak(timeline: list[dict], new: str) -> int:
    state: dict[str, dict] = {}
    peak = 0
    for e in timeline:
        state[e["name"]] = e
        down = sum(1 for s in state.values()
                   if not s["ready"] or (s["spec"]["sidecar"] == new and s["status"].get("sidecar") != new))
        peak = max(peak, down)
    return peak


def first_patched(timeline: list[dict], new: str) -> list[str]:
    order = []
    for e in timeline:
        if e["spec"]["sidecar"] == new and e["name"] not in order:
            order.append(e["name"])
    return order


def config(tmp_path, registry, kube, namespace, reload: dict, rollout: dict | None) -> dict:
    dep = {"name": "gss", "image": f"{registry.addr}/sidecar", "policy": "minor",
           "target": {"kubernetes": {"kind": "GameServerSet", "name": "gss", "namespace": namespace,
                                     "container": "sidecar"}},
           "reload": reload}
    if rollout is not None:
        dep["rollout"] = {"steps": [1, "50%", "100%"], "max_unavailable": 2, "health_timeout": 90,
                          "busy_wait": 1.5, "poll": 0.2, **rollout}
    return {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "api": {"listen": None}, "updates": {"kubeconfig": kube.kubeconfig, "deployments": [dep]}}


# Slipway drives the rollout: Kruise's rolling update is held (OKG v1.0.0 ignores type: OnDelete)
HELD = {"type": "RollingUpdate", "rollingUpdate": {"podUpdatePolicy": "InPlaceIfPossible", "paused": True}}
HTTP_RELOAD = {"http": {"port": RELOAD_PORT, "path": "/cgi-bin/reload?server={server}", "attempts": 20,
                        "backoff": 0.1}}


def poller(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poller", *args], cwd=ROOT, text=True, capture_output=True, check=False,
                          env=dict(os.environ), timeout=120)


def test_the_chart_ships_okgs_own_gameserverset_crd(tmp_path):
    log = tmp_path / "modules.log"
    [src] = [f for f in st._okg().okg_crd_files(log) if f.name == "game.kruise.io_gameserversets.yaml"]
    shipped = (ROOT / "charts" / "game-server" / "crds" / "gameserverset.yaml").read_text()
    body = "\n".join(ln for ln in shipped.splitlines() if not ln.startswith("# ")) + "\n"
    assert body == src.read_text()


def test_okg_and_kruise_update_only_the_sidecar_in_place(tmp_path, registry, kube, namespace, node, okg, closing):
    digests = push_images(node, registry, tmp_path, "1.0.0", "1.1.0")
    old, new = f"{registry.addr}/sidecar:1.0.0", f"{registry.addr}/sidecar:1.1.0"
    make_gss(kube, node, namespace, old, f"{registry.addr}/engine:7", {f"gss-{i}": {} for i in range(3)},
             strategy={"type": "RollingUpdate",
                       "rollingUpdate": {"podUpdatePolicy": "InPlaceIfPossible", "maxUnavailable": 1}})
    before = pods(kube, namespace)
    data = config(tmp_path, registry, kube, namespace, HTTP_RELOAD, rollout=None)
    cfg = parse_config(data, file="t", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates, rollout_timeout=180)))
    with Watcher(kube.api_client(), namespace) as watcher:
        [o] = eng.cycle()
        assert (o.action, o.to_ref) == ("updated", "1.1.0"), o
        # Slipway returned only once OKG reported every server updated and ready
        assert UpdateHistory(eng.store).list()[0].detail["target"]["status"] == "3/3 updated and available"
        after = pods(kube, namespace)
        assert all(containers(p)["sidecar"]["image"] == new and ready(p) for p in after.values())
    assert set(after) == set(before)
    for name, pod in after.items():
        assert pod["metadata"]["uid"] == before[name]["metadata"]["uid"]          # the same pod: in place
        eng_before, eng_after = containers(before[name])["engine"], containers(pod)["engine"]
        assert eng_after["containerID"] == eng_before["containerID"]              # engine never restarted
        assert eng_after["restartCount"] == eng_before["restartCount"] == 0
        side = containers(pod)["sidecar"]
        assert side["imageID"] == f"{registry.addr}/sidecar@{digests['1.1.0']}"  # really pulled, running
        assert side["containerID"] != containers(before[name])["sidecar"]["containerID"]
    # Kruise held the GameServerSet's maxUnavailable (1) through the whole rollout
    assert unavailable_peak(watcher.timeline(), new) == 1
    assert all(e["spec"]["engine"] == f"{registry.addr}/engine:7" for e in watcher.timeline())


def test_gradual_hot_update_order_max_unavailable_busy_pause_with_http_reload(tmp_path, registry, kube, namespace,
                                                                              node, okg, closing):
    push_images(node, registry, tmp_path, "1.0.0", "1.1.0")
    old, new = f"{registry.addr}/sidecar:1.0.0", f"{registry.addr}/sidecar:1.1.0"
    servers = {"gss-0": {PRIORITY: 1, OPS: "None"}, "gss-1": {PRIORITY: 5, OPS: "None"},
               "gss-2": {PRIORITY: 3, OPS: "Allocated"}, "gss-3": {PRIORITY: 4, OPS: "None"},
               "gss-4": {PRIORITY: 2, OPS: "None"}}
    make_gss(kube, node, namespace, old, f"{registry.addr}/engine:7", servers,
             strategy=HELD)
    before = pods(kube, namespace)
    data = config(tmp_path, registry, kube, namespace, HTTP_RELOAD, rollout={})
    sink = reload_server()   # the notification webhook
    data["notify"] = {"webhooks": [{"url": f"http://127.0.0.1:{sink.server_address[1]}/n", "format": "json"}]}
    cfg_path = tmp_path / "slipway.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = parse_config(data, file="t", env={})
    seen = Observed(cfg, Store(tmp_path / "s.db"))   # poller run's subscribers on the engine's bus
    updates_key = 'slipway_updates_total{deployment="gss",result="succeeded"}'
    updates_before = seen.metric(updates_key)
    eng = closing(build_engine(cfg, seen.store, targets=TargetFactory(cfg.updates), bus=seen.bus))
    with Watcher(kube.api_client(), namespace) as watcher:
        [o] = eng.cycle()
        # everyone but the busy server is done; the busy one waits (players on it)
        assert o.action == "rolling" and "busy" in o.detail, o
        # the rollout published its start and each batch; /metrics follows it
        assert [e.deployment for e in seen.of(RolloutStarted)] == ["gss"]
        progress = seen.of(RolloutProgress)
        assert progress and (progress[-1].done, progress[-1].total) == (4, 5)
        assert seen.metric('slipway_rollout_progress_ratio{deployment="gss"}') == 0.8
        wait_until(lambda: len(first_patched(watcher.timeline(), new)) == 4, 30, what="the watch caught up")
        timeline = watcher.timeline()
        # high update priority first (OpenKruiseGame's meaning), the busy gss-2 skipped
        assert first_patched(timeline, new) == ["gss-1", "gss-3", "gss-4", "gss-0"]
        canary_ready = next(e["rv"] for e in timeline if e["name"] == "gss-1" and e["ready"]
                            and e["status"].get("sidecar") == new)
        second = next(e["rv"] for e in timeline if e["name"] == "gss-3" and e["spec"]["sidecar"] == new)
        assert canary_ready < second                       # the canary ran the new image before anyone else moved
        assert unavailable_peak(timeline, new) == 2        # max_unavailable reached, never exceeded

        # A person pauses; the server frees up; a paused rollout does not move.
        res = poller("updates", "pause", "gss", "-c", str(cfg_path), "--by", "dana")
        assert res.returncode == 0, res.stderr
        set_ops(kube, namespace, "gss-2", "None")
        [o] = eng.cycle()
        assert o.action == "rolling" and o.detail.startswith("paused")
        assert pods(kube, namespace)["gss-2"]["spec"]["containers"][1]["image"] == old

        assert poller("updates", "resume", "gss", "-c", str(cfg_path)).returncode == 0
        [o] = eng.cycle()
        assert (o.action, o.to_ref) == ("updated", "1.1.0"), o
        timeline = watcher.timeline()
        freed = next(e["rv"] for e in timeline if e["name"] == "gss-2" and e["ops"] == "None")
        patched = next(e["rv"] for e in timeline if e["name"] == "gss-2" and e["spec"]["sidecar"] == new)
        assert freed < patched                             # never restarted with players on it

    # The finished rollout and the update were published, counted and announced.
    sink.shutdown()
    assert [e.to_ref for e in seen.of(RolloutFinished)] == ["1.1.0"]
    [update] = seen.of(UpdateFinished)
    assert (update.deployment, update.ok, update.from_ref, update.to_ref) == ("gss", True, "1.0.0", "1.1.0")
    assert seen.metric('slipway_rollout_progress_ratio{deployment="gss"}') == 1.0
    assert seen.metric(updates_key) == updates_before + 1
    assert [(b["event"], b["deployment"]) for b in sink.bodies] == [("update.succeeded", "gss")]

    after = pods(kube, namespace)
    for name, pod in after.items():                        # in place: same pods, engine untouched
        assert pod["metadata"]["uid"] == before[name]["metadata"]["uid"]
        assert containers(pod)["engine"]["containerID"] == containers(before[name])["engine"]["containerID"]
        assert containers(pod)["engine"]["restartCount"] == 0
        assert containers(pod)["sidecar"]["image"] == new
        # each server's new sidecar got exactly one reload, for itself, over HTTP on its pod IP
        assert reloads(kube, namespace, name) == [f"server={name}"]
    rec = UpdateHistory(eng.store).list()[0]
    assert rec.status == "succeeded" and (rec.from_ref, rec.to_ref) == ("1.0.0", "1.1.0")
    assert all(s["reload_status"] == "ok" for s in rec.detail["servers"])
    [r] = RolloutControl(eng.store).recent()
    assert r.state == "succeeded"
    assert [o.action for o in eng.cycle()] == ["up-to-date"]   # idempotent: nobody reloaded twice
    assert all(reloads(kube, namespace, n) == [f"server={n}"] for n in after)


def test_hot_update_without_restart_reloads_through_exec_and_abort_spares_the_busy(tmp_path, registry, kube,
                                                                                    namespace, node, okg, closing):
    push_images(node, registry, tmp_path, "1.0.0", "1.1.0")
    old = f"{registry.addr}/sidecar:1.0.0"
    servers = {f"gss-{i}": {OPS: "Allocated" if i == 0 else "None"} for i in range(3)}
    make_gss(kube, node, namespace, old, f"{registry.addr}/engine:7", servers,
             strategy=HELD)
    exec_reload = {"exec": {"command": ["/bin/busybox", "sh", "-c", "echo exec-reload >> /tmp/reloads"]}}
    # busy_wait: room for a server that is briefly not ready (OKG syncing its labels) on a loaded machine
    data = config(tmp_path, registry, kube, namespace, exec_reload, rollout={"restart": False, "steps": ["100%"],
                                                                              "max_unavailable": "100%",
                                                                              "busy_wait": 30})
    cfg = parse_config(data, file="t", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates)))
    [o] = eng.cycle()
    assert o.action == "updated", o                        # the hot update does not drop players: busy included
    current = pods(kube, namespace)
    assert {containers(p)["sidecar"]["image"] for p in current.values()} == {f"{registry.addr}/sidecar:1.1.0"}
    assert all(reloads(kube, namespace, n) == ["exec-reload"] for n in current)   # exec in the real container

    # Abort: a newer version whose rollout waits on a busy server, then a person aborts it.
    push_images(node, registry, tmp_path, "1.2.0")
    data["updates"]["deployments"][0]["rollout"].update(restart=True, steps=[1, "100%"], busy_wait=1.5)
    cfg = parse_config(data, file="t", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates)))
    [o] = eng.cycle()
    assert o.action == "rolling" and "busy" in o.detail
    from poller.api import create_app
    from poller.runtime import Runtime

    data["api"]["token"] = "t0ken"
    app = create_app(Runtime(config=parse_config(data, file="t", env={}), store=eng.store))
    resp = app.test_client().post("/api/v1/updates/deployments/gss/rollout/abort", json={"by": "erin"},
                                  headers={"Authorization": "Bearer t0ken"})
    assert resp.status_code == 200 and resp.json["state"] == "aborted", resp.json
    [o] = eng.cycle()
    assert o.action in ("failed", "up-to-date")
    rec = UpdateHistory(eng.store).list()[0]
    assert rec.to_ref == "1.2.0" and rec.status == "failed" and "aborted" in rec.error
    busy = pods(kube, namespace)["gss-0"]
    assert busy["spec"]["containers"][1]["image"].endswith(":1.1.0")      # the busy one was left alone
    assert containers(busy)["sidecar"]["image"].endswith(":1.1.0")


def test_rollout_to_a_tag_whose_image_was_first_pulled_under_another_tag_completes(tmp_path, registry, kube,
                                                                                  namespace, node, okg, closing):
    """One image pushed as 1.0.0 and as 1.1.0: containerd keeps one image per digest and the kubelet
    reports the restarted container under the name it first pulled (1.0.0); the health gate
    compares the digest the target tag points at with the container's imageID, not names."""
    digest = push_images(node, registry, tmp_path, "1.0.0")["1.0.0"]
    assert push_sidecar(node, registry, tmp_path, "1.1.0", version="1.0.0") == digest
    old, new = f"{registry.addr}/sidecar:1.0.0", f"{registry.addr}/sidecar:1.1.0"
    make_gss(kube, node, namespace, old, f"{registry.addr}/engine:7", {"gss-0": {}, "gss-1": {}}, strategy=HELD)
    data = config(tmp_path, registry, kube, namespace, HTTP_RELOAD,
                  rollout={"steps": [1, "100%"], "health_timeout": 30})
    cfg = parse_config(data, file="t", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates)))
    [o] = eng.cycle()
    assert (o.action, o.to_ref) == ("updated", "1.1.0"), o
    for pod in pods(kube, namespace).values():
        assert pod["spec"]["containers"][1]["image"] == new
        side = containers(pod)["sidecar"]
        assert side["ready"] and side["imageID"] == f"{registry.addr}/sidecar@{digest}"
        assert side["image"] == old  # the name the kubelet reports: the first one pulled
