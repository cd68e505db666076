"""Plugin restarts on Kubernetes, against the real node (containerd + kubelet, toolchain/slipway_toolchain/node.py)
and the real OpenKruiseGame v1.0.0 + Kruise v1.8.0 (toolchain/slipway_toolchain/okg.py).

Slipway restarts outdated game-server pods by deleting them; their real controllers recreate
them (a Deployment's ReplicaSet for the lobbies; a GameServerSet, through Kruise's StatefulSet,
for the survival servers), and each new pod fetches its plugin set at start-up with the shipped
``fetch-plugins.sh`` (busybox wget) in an init container. What a pod runs is read INSIDE it
(``kubectl exec cat /plugins/plugins.txt`` and the jar's sha256). The pods reach the plugin
registry on the node's bridge gateway (an address the node made). The test plays only the
players: the busy label on a lobby, OpenKruiseGame's opsState on a GameServer. A watch on the
API server checks, event by event, that no busy pod began terminating and that each type's
max_unavailable held.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from poller.artifacts.kube import STAMP, TYPE_LABEL, KubePluginRollout, pod_ready
from poller.artifacts.store import ArtifactStore
from poller.config import parse_config
from poller.registry.client import RegistryClient
from tests.fixtures.services import start_registry, stop_registry, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
FETCH = ROOT / "poller" / "artifacts" / "fetch-plugins.sh"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
BUSY = "slipway.io/busy"
DRAIN = "slipway.io/drain"
OPS = "game.kruise.io/gs-opsState"
REPLICAS = {"lobby": 3, "survival": 2}
MAX_UNAVAILABLE = {"lobby": 1, "survival": 1}
PLUGINS = {"lobby": "chat perms", "survival": "perms"}


def busy(labels: dict) -> bool:
    return labels.get(BUSY) == "true" or labels.get(OPS) == "Allocated"


def jar(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", text)
    return buf.getvalue()


def pod_spec(image: str, registry: str, server_type: str, placement: dict) -> dict:
    """The game server: an init container runs fetch-plugins.sh into /plugins, then the server runs."""
    env = [{"name": "SLIPWAY_REGISTRY", "value": f"http://{registry}"},
           {"name": "SLIPWAY_PLUGINS", "value": PLUGINS[server_type]},
           {"name": "SLIPWAY_CHANNEL", "value": f"k8s-{server_type}"}]
    mounts = [{"name": "plugins", "mountPath": "/plugins"}]
    return {**placement, "terminationGracePeriodSeconds": 1, "volumes": [{"name": "plugins", "emptyDir": {}}],
            "initContainers": [{"name": "fetch-plugins", "image": image, "env": env, "volumeMounts": mounts,
                                "command": ["/bin/busybox", "sh", "/fetch-plugins.sh"]}],
            "containers": [{"name": "gs", "image": image, "volumeMounts": mounts,
                            "command": ["/bin/busybox", "sleep", "2147483647"]}]}


def deployment(name: str, spec: dict, replicas: int) -> dict:
    labels = {"app": name, TYPE_LABEL: name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def gameserverset(name: str, spec: dict, replicas: int) -> dict:
    return {"apiVersion": "game.kruise.io/v1alpha1", "kind": "GameServerSet", "metadata": {"name": name},
            "spec": {"replicas": replicas,
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"podUpdatePolicy": "InPlaceIfPossible"}},
                     "gameServerTemplate": {"metadata": {"labels": {TYPE_LABEL: name}}, "spec": spec}}}


class PodWatch(threading.Thread):
    """Follows the namespace's game-server pods through a watch on the API server.

    After every event it checks, per server type, how many pods the Deployment wants but are
    not Ready (missing, starting, terminating), and whether a pod began terminating while it
    carried a busy marker (the busy label, OpenKruiseGame's opsState Allocated). ``deletions`` lists (type, name, uid) in the order they began."""

    def __init__(self, core, namespace: str):
        super().__init__(daemon=True)
        self.core, self.namespace = core, namespace
        self.pods: dict[str, object] = {}
        self.deletions: list[tuple[str, str, str]] = []
        self.worst = {t: 0 for t in REPLICAS}
        self.violations: list[str] = []
        self.events = 0
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        listed = self.core.list_namespaced_pod(self.namespace, label_selector=TYPE_LABEL)
        for pod in listed.items:
            self.pods[pod.metadata.uid] = pod
        version = listed.metadata.resource_version
        while not self.halt.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.core.list_namespaced_pod, self.namespace, label_selector=TYPE_LABEL,
                                   resource_version=version, timeout_seconds=2):
                    pod = ev["object"]
                    version = pod.metadata.resource_version
                    self.seen(ev["type"], pod)
                    if self.halt.is_set():
                        break
            except ApiException as exc:
                if exc.status != 410:
                    self.violations.append(f"watch failed: {exc}")
                    return
                listed = self.core.list_namespaced_pod(self.namespace, label_selector=TYPE_LABEL)
                version = listed.metadata.resource_version
            finally:
                w.stop()

    def seen(self, kind: str, pod) -> None:
        with self.lock:
            self.events += 1
            uid = pod.metadata.uid
            before = self.pods.get(uid)
            starting_deletion = (kind == "DELETED" or pod.metadata.deletion_timestamp is not None) and \
                not any(uid == d[2] for d in self.deletions)
            if starting_deletion:
                t = pod.metadata.labels[TYPE_LABEL]
                self.deletions.append((t, pod.metadata.name, uid))
                labels = (before or pod).metadata.labels or {}
                if busy(labels) or busy(pod.metadata.labels or {}):
                    self.violations.append(f"{pod.metadata.name} was deleted while it had players")
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = pod
            for t, wanted in REPLICAS.items():
                ready = sum(1 for p in self.pods.values() if p.metadata.labels[TYPE_LABEL] == t and pod_ready(p))
                down = max(0, wanted - ready)
                self.worst[t] = max(self.worst[t], down)
                if down > MAX_UNAVAILABLE[t]:
                    self.violations.append(f"{t}: {down} pods unavailable at once (event {self.events})")


@pytest.fixture
def cluster_plugins(kube, namespace, node, okg, tmp_path):
    """The plugin registry on the node's bridge gateway (the pods fetch from it, Slipway pushes to
    it), the game-server image (static busybox + fetch-plugins.sh, FROM scratch) in it, and the
    rollout's config, store and API clients."""
    from kubernetes import client

    gateway = node.subnet.rsplit(".", 1)[0] + ".1"
    reg = start_registry(tmp_path / "plugin-registry", host=gateway)
    try:
        node.allow_registry(reg.addr)
        image = node.push_image(reg.addr, "gs", "1", {"bin/busybox": Path(BUSYBOX), "fetch-plugins.sh": FETCH},
                                ["/bin/busybox", "sleep", "2147483647"], env=["PATH=/bin"])
        api = kube.api_client()
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        cfg = parse_config({"registry": {"url": reg.addr, "insecure": True},
                            "plugins": {"server_types": {
                                "lobby": {"plugins": {"chat": "latest", "perms": "latest"},
                                          "max_unavailable": MAX_UNAVAILABLE["lobby"]},
                                "survival": {"plugins": {"perms": "latest"}, "depends_on": ["lobby"],
                                             "max_unavailable": MAX_UNAVAILABLE["survival"]}},
                                "probe": {"restart_timeout": 120},
                                "environments": {"k8s": {"kubernetes_namespace": namespace}}}}, env={})
        store = ArtifactStore(RegistryClient(cfg.registry), "plugins")
        yield apps, core, cfg, store, image, reg.addr
    finally:
        stop_registry(reg)
        reg.sink.shutdown()


def live(core, namespace: str, server_type: str) -> dict[str, object]:
    """name -> pod, for the type's pods that are not terminating."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{TYPE_LABEL}={server_type}").items
    return {p.metadata.name: p for p in pods if p.metadata.deletion_timestamp is None}


def all_ready(core, namespace: str) -> bool:
    return all(len([p for p in live(core, namespace, t).values() if pod_ready(p)]) == n
               for t, n in REPLICAS.items())


def stamps(core, namespace: str, server_type: str) -> dict[str, str | None]:
    return {n: (p.metadata.annotations or {}).get(STAMP) for n, p in live(core, namespace, server_type).items()}


def inside(kube, namespace: str, pod: str) -> dict[str, tuple[str, str]]:
    """What the running container has in /plugins: plugin -> (version, digest), each jar's sha256
    checked against the digest plugins.txt reports."""
    def sh(*cmd: str) -> str:
        return kube.kubectl("exec", "-n", namespace, pod, "-c", "gs", "--", "/bin/busybox", *cmd).stdout

    out = {}
    for line in sh("cat", "/plugins/plugins.txt").splitlines():
        plugin, version, digest = line.split()
        assert "sha256:" + sh("sha256sum", f"/plugins/{plugin}.jar").split()[0] == digest, (pod, plugin)
        out[plugin] = (version, digest)
    return out


def running(kube, core, namespace: str, server_type: str) -> dict[str, dict[str, tuple[str, str]]]:
    return {name: inside(kube, namespace, name) for name in live(core, namespace, server_type)}


def set_ops(kube, namespace: str, name: str, ops: str) -> None:
    kube.kubectl("patch", "gs", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"opsState": ops}}))
    wait_until(lambda: (json.loads(kube.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
                        ["metadata"].get("labels") or {}).get(OPS) == ops, 60, what=f"{name} opsState {ops} on the pod")


def test_restarted_pods_are_recreated_by_their_controllers_and_fetch_the_new_plugins_busy_spared(
        kube, namespace, node, cluster_plugins):
    apps, core, cfg, store, image, reg = cluster_plugins
    v1 = {p: store.push(p, jar(f"{p} 1"), "1.0.0") for p in ("chat", "perms")}
    rollout = KubePluginRollout(cfg.plugins, store, apps, core)
    assert rollout.cycle("k8s").restarted == []  # channels and the record exist; no pods yet
    apps.create_namespaced_deployment(namespace, deployment("lobby", pod_spec(image, reg, "lobby", node.placement()),
                                                            REPLICAS["lobby"]))
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
        gameserverset("survival", pod_spec(image, reg, "survival", node.placement()), REPLICAS["survival"])))
    wait_until(lambda: all_ready(core, namespace), timeout=180, what="every pod ready")
    want_v1 = {p: ("1.0.0", a.digest) for p, a in v1.items()}
    assert all(got == want_v1 for got in running(kube, core, namespace, "lobby").values())
    assert all(got == {"perms": want_v1["perms"]} for got in running(kube, core, namespace, "survival").values())

    watcher = PodWatch(core, namespace)
    watcher.start()
    wait_until(lambda: watcher.pods, timeout=30, what="the watch to list the pods")

    # pods created after the channels were recorded run them: stamped, nothing restarted
    first = rollout.cycle("k8s")
    assert first.restarted == [] and first.draining == [] and len(first.up_to_date) == 5
    s1 = {t: set(stamps(core, namespace, t).values()) for t in REPLICAS}
    assert all(len(v) == 1 and None not in v for v in s1.values()), s1
    survival_uids = {p.metadata.uid for p in live(core, namespace, "survival").values()}

    # players join one lobby; a new chat build concerns lobbies only
    lobbies = sorted(live(core, namespace, "lobby"))
    busy_lobby = lobbies[1]
    busy_uid = live(core, namespace, "lobby")[busy_lobby].metadata.uid
    core.patch_namespaced_pod(busy_lobby, namespace, {"metadata": {"labels": {BUSY: "true"}}})
    chat2 = store.push("chat", jar("chat 2"), "1.1.0")
    report = rollout.cycle("k8s")
    assert report.draining == [busy_lobby]
    assert len(report.restarted) == 2 and busy_lobby not in report.restarted
    assert report.errors == [] and report.waiting == []
    wait_until(lambda: len([p for p in live(core, namespace, "lobby").values() if pod_ready(p)]) == 3, 120,
               what="the Deployment recreated the lobbies")
    now = live(core, namespace, "lobby")
    assert now[busy_lobby].metadata.uid == busy_uid, "the pod with players was deleted"
    assert now[busy_lobby].metadata.annotations.get(DRAIN) == "requested"
    want_v2 = {**want_v1, "chat": ("1.1.0", chat2.digest)}
    inside_now = running(kube, core, namespace, "lobby")
    assert inside_now.pop(busy_lobby) == want_v1  # still the old set: not restarted while busy
    assert set(inside_now).isdisjoint(lobbies) and all(got == want_v2 for got in inside_now.values())
    assert {p.metadata.uid for p in live(core, namespace, "survival").values()} == survival_uids

    # the players leave: the next cycle restarts it; the Deployment's new pod fetches the new set
    core.patch_namespaced_pod(busy_lobby, namespace, {"metadata": {"labels": {BUSY: None}}})
    freed = rollout.cycle("k8s")
    assert freed.restarted == [busy_lobby] and freed.draining == []
    wait_until(lambda: all_ready(core, namespace), timeout=120, what="every pod ready")
    assert all(got == want_v2 for got in running(kube, core, namespace, "lobby").values())

    # a survival server gets players (OpenKruiseGame's opsState); perms is used by both types:
    # every lobby before any survival server, one at a time, the allocated one spared
    allocated = min(live(core, namespace, "survival"))
    allocated_uid = live(core, namespace, "survival")[allocated].metadata.uid
    set_ops(kube, namespace, allocated, "Allocated")
    mark = len(watcher.deletions)
    perms2 = store.push("perms", jar("perms 2"), "1.1.0")
    both = rollout.cycle("k8s")
    assert len(both.restarted) == 4 and both.draining == [allocated] and both.errors == [], both
    wait_until(lambda: all_ready(core, namespace), timeout=180, what="every pod ready")
    wait_until(lambda: len(watcher.deletions) - mark >= 4, timeout=30, what="the watch to see 4 deletions")
    assert [t for t, _, _ in watcher.deletions[mark:]] == ["lobby"] * 3 + ["survival"]
    want_v3 = {"chat": want_v2["chat"], "perms": ("1.1.0", perms2.digest)}
    assert all(got == want_v3 for got in running(kube, core, namespace, "lobby").values())
    survival = running(kube, core, namespace, "survival")
    assert survival.pop(allocated) == {"perms": want_v1["perms"]}
    assert list(survival.values()) == [{"perms": want_v3["perms"]}]
    assert live(core, namespace, "survival")[allocated].metadata.uid == allocated_uid

    # the game ends: Kruise recreates the freed server under its name, with the new set
    set_ops(kube, namespace, allocated, "None")
    last = rollout.cycle("k8s")
    assert last.restarted == [allocated] and last.draining == []
    wait_until(lambda: all_ready(core, namespace), timeout=180, what="every pod ready")
    pod = live(core, namespace, "survival")[allocated]
    assert pod.metadata.uid != allocated_uid and pod.spec.node_name == node.name
    assert inside(kube, namespace, allocated) == {"perms": want_v3["perms"]}
    assert rollout.cycle("k8s").restarted == []

    watcher.halt.set()
    watcher.join(10)
    assert watcher.violations == [], watcher.violations[:10]
    # the rule was exercised, not trivially met: a pod of each type was down at some point
    assert watcher.worst == {"lobby": 1, "survival": 1}
    # every deletion the watch saw was one the rollout reported
    assert len(watcher.deletions) == 2 + 1 + 4 + 1
