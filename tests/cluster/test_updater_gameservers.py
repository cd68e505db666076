"""Gradual in-place hot update of game servers (OpenKruiseGame GameServerSet) against the
real API server, asserted by watching the API server.

There is no OpenKruiseGame controller and KWOK has no kubelet, so the test plays two parts
and only those: it creates the GameServerSet's pods with the labels OpenKruiseGame puts on
them (owner, update priority, opsState), and :class:`Kubelet` acts as a kubelet would when a
container image changes on a live pod (the container restarts: not ready for a moment, then
ready on the new image). Everything else is Slipway: it patches the GameServerSet spec, then
the pods one step at a time, and calls each server's reload endpoint (a real HTTP server).
"""

from __future__ import annotations

import json
import os
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
from poller.targets.factory import TargetFactory
from poller.updater.build import build_engine
from poller.updater.history import UpdateHistory
from tests.fixtures.services import wait_until
from tests.integration.event_support import Observed
from tests.integration.updater_support import reload_server, seed_tag

pytestmark = [pytest.mark.cluster, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
OWNER, PRIORITY, OPS = "game.kruise.io/owner-gss", "game.kruise.io/gs-update-priority", "game.kruise.io/gs-opsState"


class Kubelet:
    """Watches the namespace's pods; records every event (the timeline the assertions read) and,
    when a container's image differs from what runs, restarts it in place after ``restart_s``."""

    def __init__(self, api, namespace: str, restart_s: float = 0.4):
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.namespace, self.restart_s = namespace, restart_s
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self._restarting: set[tuple[str, str]] = set()
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
                self._react(pod)
                if self._stop.is_set():
                    w.stop()
                    break

    def _record(self, kind: str, pod: dict):
        status = pod.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        with self.lock:
            self.events.append({
                "type": kind, "name": pod["metadata"]["name"], "rv": int(pod["metadata"]["resourceVersion"]),
                "spec": {c["name"]: c["image"] for c in pod["spec"]["containers"]},
                "status": {c["name"]: c.get("image") for c in status.get("containerStatuses") or []},
                "ready": ready, "ops": (pod["metadata"].get("labels") or {}).get(OPS)})

    def _react(self, pod: dict):
        status = pod.get("status") or {}
        running = {c["name"]: c for c in status.get("containerStatuses") or []}
        if not running:
            return  # KWOK has not started it yet
        for c in pod["spec"]["containers"]:
            key = (pod["metadata"]["name"], c["name"])
            if running.get(c["name"], {}).get("image") != c["image"] and key not in self._restarting:
                self._restarting.add(key)
                self._set(pod["metadata"]["name"], c["name"], None)
                threading.Timer(self.restart_s, self._set, (pod["metadata"]["name"], c["name"], c["image"])).start()

    def _set(self, name: str, container: str, image: str | None):
        """``image=None``: the container is restarting (not ready); else it runs ``image``, ready."""
        pod = self.core.api_client.sanitize_for_serialization(self.core.read_namespaced_pod(name, self.namespace))
        statuses = []
        for cs in pod["status"]["containerStatuses"]:
            if cs["name"] == container:
                cs = {**cs, "ready": image is not None, "restartCount": cs.get("restartCount", 0) + (image is not None)}
                if image:
                    cs["image"] = image
            statuses.append(cs)
        ready = "True" if all(cs["ready"] for cs in statuses) else "False"
        conds = [{**c, "status": ready} if c["type"] in ("Ready", "ContainersReady") else c
                 for c in pod["status"]["conditions"]]
        self.core.patch_namespaced_pod_status(name, self.namespace,
                                              {"status": {"conditions": conds, "containerStatuses": statuses}})
        if image:
            self._restarting.discard((name, container))

    def timeline(self) -> list[dict]:
        with self.lock:
            return sorted(self.events, key=lambda e: e["rv"])


def make_gss(kube, namespace: str, image: str, engine_image: str, servers: dict[str, dict]):
    gss = {"apiVersion": "game.kruise.io/v1alpha1", "kind": "GameServerSet",
           "metadata": {"name": "gss", "namespace": namespace},
           "spec": {"replicas": len(servers),
                    "updateStrategy": {"rollingUpdate": {"podUpdatePolicy": "InPlaceIfPossible"}},
                    "gameServerTemplate": {"spec": {"containers": [
                        {"name": "engine", "image": engine_image}, {"name": "sidecar", "image": image}]}}}}
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(gss))
    # The pods OpenKruiseGame would create for it (host network: KWOK gives them the node's IP,
    # 127.0.0.1, where the test's reload server listens).
    for name, labels in servers.items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace,
                            "labels": {OWNER: "gss", **{k: str(v) for k, v in labels.items()}}},
               "spec": {"hostNetwork": True, "containers": [
                   {"name": "engine", "image": engine_image}, {"name": "sidecar", "image": image}]}}
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    wait_until(lambda: all(p["status"].get("podIP") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        for p in json.loads(kube.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]),
        timeout=60, what="game server pods ready")


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


def config(tmp_path, registry, kube, namespace, port, **rollout) -> dict:
    return {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "api": {"listen": None},
            "updates": {"kubeconfig": kube.kubeconfig, "deployments": [
                {"name": "gss", "image": f"{registry.addr}/sidecar", "policy": "minor",
                 "target": {"kubernetes": {"kind": "GameServerSet", "name": "gss", "namespace": namespace,
                                           "container": "sidecar"}},
                 "rollout": {"steps": [1, "50%", "100%"], "max_unavailable": 2, "health_timeout": 30,
                             "busy_wait": 1.5, "poll": 0.1, **rollout},
                 "reload": {"http": {"port": port, "path": "/reload?server={server}", "attempts": 5,
                                     "backoff": 0.05}}}]}}


def poller(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poller", *args], cwd=ROOT, text=True, capture_output=True,
                          env=dict(os.environ))


def test_gradual_hot_update_order_max_unavailable_busy_pause(tmp_path, registry, kube, namespace):
    old, new = f"{registry.addr}/sidecar:1.0.0", f"{registry.addr}/sidecar:1.1.0"
    seed_tag(registry, "sidecar", "1.0.0")
    seed_tag(registry, "sidecar", "1.1.0")
    servers = {"gss-0": {PRIORITY: 1, OPS: "None"}, "gss-1": {PRIORITY: 5, OPS: "None"},
               "gss-2": {PRIORITY: 3, OPS: "Allocated"}, "gss-3": {PRIORITY: 4, OPS: "None"},
               "gss-4": {PRIORITY: 2, OPS: "None"}}
    make_gss(kube, namespace, old, "engine:7", servers)
    reload = reload_server()
    sink = reload_server()   # the notification webhook
    data = config(tmp_path, registry, kube, namespace, reload.server_address[1])
    data["notify"] = {"webhooks": [{"url": f"http://127.0.0.1:{sink.server_address[1]}/n", "format": "json"}]}
    cfg_path = tmp_path / "slipway.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = parse_config(data, file="t", env={})
    seen = Observed(cfg, Store(tmp_path / "s.db"))
    updates_key = 'slipway_updates_total{deployment="gss",result="succeeded"}'
    updates_before = seen.metric(updates_key)
    eng = build_engine(cfg, seen.store, targets=TargetFactory(cfg.updates), bus=seen.bus)
    try:
        with Kubelet(kube.api_client(), namespace) as kubelet:
            [o] = eng.cycle()
            # everyone but the busy server is done; the busy one waits (players on it)
            assert o.action == "rolling" and "busy" in o.detail, o
            # the rollout published its start and each batch; /metrics follows it
            assert [e.deployment for e in seen.of(RolloutStarted)] == ["gss"]
            progress = seen.of(RolloutProgress)
            assert progress and (progress[-1].done, progress[-1].total) == (4, 5)
            assert seen.metric('slipway_rollout_progress_ratio{deployment="gss"}') == 0.8
            gss = json.loads(kube.kubectl("get", "gss", "gss", "-n", namespace, "-o", "json").stdout)
            assert {c["name"]: c["image"] for c in gss["spec"]["gameServerTemplate"]["spec"]["containers"]} == \
                {"engine": "engine:7", "sidecar": new}
            timeline = kubelet.timeline()
            # high update priority first (OpenKruiseGame's meaning), the busy gss-2 skipped
            assert first_patched(timeline, new) == ["gss-1", "gss-3", "gss-4", "gss-0"]
            # the canary was ready on the new image before anyone else was touched
            canary_ready = next(e["rv"] for e in timeline if e["name"] == "gss-1" and e["ready"]
                                and e["status"].get("sidecar") == new)
            second = next(e["rv"] for e in timeline if e["name"] == "gss-3" and e["spec"]["sidecar"] == new)
            assert canary_ready < second
            assert unavailable_peak(timeline, new) == 2          # maxUnavailable reached, never exceeded
            # in place: same pods (same uid), engine untouched
            assert all(e["spec"]["engine"] == "engine:7" for e in timeline)

            # A person pauses; the server frees up; a paused rollout does not move.
            res = poller("updates", "pause", "gss", "-c", str(cfg_path), "--by", "dana")
            assert res.returncode == 0, res.stderr
            kube.kubectl("label", "pod", "gss-2", "-n", namespace, f"{OPS}=None", "--overwrite")
            [o] = eng.cycle()
            assert o.action == "rolling" and o.detail.startswith("paused")
            pod = json.loads(kube.kubectl("get", "pod", "gss-2", "-n", namespace, "-o", "json").stdout)
            assert pod["spec"]["containers"][1]["image"] == old

            assert poller("updates", "resume", "gss", "-c", str(cfg_path)).returncode == 0
            [o] = eng.cycle()
            assert (o.action, o.to_ref) == ("updated", "1.1.0"), o
            timeline = kubelet.timeline()
            freed = next(e["rv"] for e in timeline if e["name"] == "gss-2" and e["ops"] == "None")
            patched = next(e["rv"] for e in timeline if e["name"] == "gss-2" and e["spec"]["sidecar"] == new)
            assert freed < patched                                # never restarted with players on it
    finally:
        reload.shutdown()
        sink.shutdown()

    # The finished rollout and the update were published, counted and announced.
    assert [e.to_ref for e in seen.of(RolloutFinished)] == ["1.1.0"]
    [update] = seen.of(UpdateFinished)
    assert (update.deployment, update.ok, update.from_ref, update.to_ref) == ("gss", True, "1.0.0", "1.1.0")
    assert seen.metric('slipway_rollout_progress_ratio{deployment="gss"}') == 1.0
    assert seen.metric(updates_key) == updates_before + 1
    assert [b["event"] for b in sink.bodies] == ["update.succeeded"]
    assert sink.bodies[0]["deployment"] == "gss"

    # Each server reloaded exactly once, at its own address; per-server results are recorded.
    assert sorted(p for _, p in reload.calls) == [f"/reload?server=gss-{i}" for i in range(5)]
    rec = UpdateHistory(eng.store).list()[0]
    assert rec.status == "succeeded" and (rec.from_ref, rec.to_ref) == ("1.0.0", "1.1.0")
    servers_done = {s["server"]: s for s in rec.detail["servers"]}
    assert set(servers_done) == set(servers) and all(s["reload_status"] == "ok" for s in servers_done.values())
    [r] = RolloutControl(eng.store).recent()
    assert r.state == "succeeded"
    # Running again is idempotent: nothing patched, nobody reloaded twice.
    assert [o.action for o in eng.cycle()] == ["up-to-date"]
    assert len(reload.calls) == 5


def test_sidecar_hot_update_without_restart_includes_busy_servers_and_abort(tmp_path, registry, kube,
                                                                            namespace):
    old = f"{registry.addr}/sidecar:1.0.0"
    seed_tag(registry, "sidecar", "1.0.0")
    seed_tag(registry, "sidecar", "1.1.0")
    servers = {f"gs-{i}": {OPS: "Allocated" if i == 0 else "None"} for i in range(3)}
    make_gss(kube, namespace, old, "engine:7", servers)
    reload = reload_server()
    try:
        data = config(tmp_path, registry, kube, namespace, reload.server_address[1], restart=False,
                      steps=["100%"], max_unavailable="100%")
        cfg = parse_config(data, file="t", env={})
        eng = build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates))
        with Kubelet(kube.api_client(), namespace):
            [o] = eng.cycle()
            assert o.action == "updated", o       # the hot update does not drop players: busy included
            pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
            assert {p["spec"]["containers"][1]["image"] for p in pods} == {f"{registry.addr}/sidecar:1.1.0"}

            # Abort: a newer version whose rollout waits on a busy server, then a person aborts it.
            seed_tag(registry, "sidecar", "1.2.0")
            data["updates"]["deployments"][0]["rollout"].update(restart=True, steps=[1, "100%"])
            cfg = parse_config(data, file="t", env={})
            eng = build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates))
            [o] = eng.cycle()
            assert o.action == "rolling" and "busy" in o.detail
            from poller.api import Services, create_app

            data["api"]["token"] = "t0ken"
            app = create_app(Services(config=parse_config(data, file="t", env={}), store=eng.store))
            resp = app.test_client().post("/api/v1/updates/deployments/gss/rollout/abort", json={"by": "erin"},
                                          headers={"Authorization": "Bearer t0ken"})
            assert resp.status_code == 200 and resp.json["state"] == "aborted", resp.json
            [o] = eng.cycle()
            assert o.action in ("failed", "up-to-date")
            rec = UpdateHistory(eng.store).list()[0]
            assert rec.to_ref == "1.2.0" and rec.status == "failed" and "aborted" in rec.error
            pod = json.loads(kube.kubectl("get", "pod", "gs-0", "-n", namespace, "-o", "json").stdout)
            assert pod["spec"]["containers"][1]["image"].endswith(":1.1.0")   # the busy one was left alone
    finally:
        reload.shutdown()
