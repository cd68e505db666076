"""Plugin rollouts on Kubernetes (the real control plane from scripts/toolchain, kwok nodes).

Slipway restarts outdated game-server pods by deleting them (their Deployment recreates them,
and a new pod fetches the new plugins at start). The test only plays the players, by setting
and clearing the busy label on a pod; everything is asserted from the API server: a watch
records every pod event, and the rules are checked on that record, event by event.
"""

from __future__ import annotations

import io
import threading
import zipfile

import pytest

from poller.artifacts.kube import STAMP, TYPE_LABEL, KubePluginRollout, pod_ready
from poller.artifacts.store import ArtifactStore
from poller.config import parse_config
from poller.registry.client import RegistryClient
from tests.fixtures.services import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

BUSY = "slipway.io/busy"
DRAIN = "slipway.io/drain"
REPLICAS = {"lobby": 3, "survival": 2}
MAX_UNAVAILABLE = {"lobby": 1, "survival": 1}


def jar(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", text)
    return buf.getvalue()


def deployment(name: str, server_type: str, replicas: int) -> dict:
    labels = {"app": name, TYPE_LABEL: server_type}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"terminationGracePeriodSeconds": 1,
                                           "containers": [{"name": "gs", "image": "registry.invalid/gs:1"}]}}}}


class PodWatch(threading.Thread):
    """Follows the namespace's game-server pods through a watch on the API server.

    After every event it checks, per server type, how many pods the Deployment wants but are
    not Ready (missing, starting, terminating), and whether a pod began terminating while it
    carried the busy label. ``deletions`` lists (type, name, uid) in the order they began."""

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
                if labels.get(BUSY) == "true" or (pod.metadata.labels or {}).get(BUSY) == "true":
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
def cluster_plugins(kube, namespace, registry):
    from kubernetes import client

    api = kube.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    cfg = parse_config({"registry": {"url": registry.addr, "insecure": True},
                        "plugins": {"server_types": {
                            "lobby": {"plugins": {"chat": "latest", "perms": "latest"},
                                      "max_unavailable": MAX_UNAVAILABLE["lobby"]},
                            "survival": {"plugins": {"perms": "latest"}, "depends_on": ["lobby"],
                                         "max_unavailable": MAX_UNAVAILABLE["survival"]}},
                            "probe": {"restart_timeout": 90},
                            "environments": {"k8s": {"kubernetes_namespace": namespace}}}}, env={})
    store = ArtifactStore(RegistryClient(cfg.registry), "plugins")
    return apps, core, cfg, store


def live(core, namespace: str, server_type: str) -> dict[str, object]:
    """name -> pod, for the type's pods that are not terminating."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{TYPE_LABEL}={server_type}").items
    return {p.metadata.name: p for p in pods if p.metadata.deletion_timestamp is None}


def all_ready(core, namespace: str) -> bool:
    return all(len([p for p in live(core, namespace, t).values() if pod_ready(p)]) == n
               for t, n in REPLICAS.items())


def stamps(core, namespace: str, server_type: str) -> dict[str, str | None]:
    return {n: (p.metadata.annotations or {}).get(STAMP) for n, p in live(core, namespace, server_type).items()}


def test_pod_restarts_idle_first_busy_drained_and_never_deleted_with_players(kube, namespace, cluster_plugins):
    apps, core, cfg, store = cluster_plugins
    for plugin in ("chat", "perms"):
        store.push(plugin, jar(f"{plugin} 1"), "1.0.0")
    rollout = KubePluginRollout(cfg.plugins, store, apps, core)
    assert rollout.cycle("k8s").restarted == []  # channels and the record exist; no pods yet
    for t, n in REPLICAS.items():
        apps.create_namespaced_deployment(namespace, deployment(t, t, n))
    wait_until(lambda: all_ready(core, namespace), timeout=120, what="every pod ready")

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
    busy = lobbies[1]
    busy_uid = live(core, namespace, "lobby")[busy].metadata.uid
    core.patch_namespaced_pod(busy, namespace, {"metadata": {"labels": {BUSY: "true"}}})
    store.push("chat", jar("chat 2"), "1.1.0")
    report = rollout.cycle("k8s")
    assert report.draining == [busy]
    assert sorted(report.restarted) == [n for n in lobbies if n != busy]
    assert report.errors == [] and report.waiting == []
    now = live(core, namespace, "lobby")
    assert busy in now and now[busy].metadata.uid == busy_uid, "the pod with players was deleted"
    assert now[busy].metadata.annotations.get(DRAIN) == "requested"
    new_lobby = {v for n, v in stamps(core, namespace, "lobby").items() if n != busy}
    assert len(new_lobby) == 1 and new_lobby != s1["lobby"]
    assert stamps(core, namespace, "lobby")[busy] in s1["lobby"]
    assert {p.metadata.uid for p in live(core, namespace, "survival").values()} == survival_uids

    # still busy: still not restarted
    again = rollout.cycle("k8s")
    assert again.restarted == [] and again.draining == [busy]
    assert live(core, namespace, "lobby")[busy].metadata.uid == busy_uid

    # the players leave: the next cycle restarts it
    core.patch_namespaced_pod(busy, namespace, {"metadata": {"labels": {BUSY: None}}})
    freed = rollout.cycle("k8s")
    assert freed.restarted == [busy] and freed.draining == []
    wait_until(lambda: all_ready(core, namespace), timeout=60, what="every pod ready")
    assert set(stamps(core, namespace, "lobby").values()) == new_lobby
    assert all(p.metadata.uid != busy_uid for p in live(core, namespace, "lobby").values())
    assert {p.metadata.uid for p in live(core, namespace, "survival").values()} == survival_uids
    assert rollout.cycle("k8s").restarted == []

    # perms is used by both types: every lobby before any survival server, one at a time
    mark = len(watcher.deletions)
    store.push("perms", jar("perms 2"), "1.1.0")
    both = rollout.cycle("k8s")
    assert len(both.restarted) == 5 and both.errors == []
    wait_until(lambda: all_ready(core, namespace), timeout=60, what="every pod ready")
    wait_until(lambda: len(watcher.deletions) - mark >= 5, timeout=30, what="the watch to see 5 deletions")
    order = [t for t, _, _ in watcher.deletions[mark:]]
    assert order == ["lobby"] * 3 + ["survival"] * 2, order
    for t in REPLICAS:
        after = set(stamps(core, namespace, t).values())
        assert len(after) == 1 and None not in after

    watcher.halt.set()
    watcher.join(10)
    assert watcher.violations == [], watcher.violations[:10]
    # the rule was exercised, not trivially met: a pod of each type was down at some point
    assert watcher.worst == {"lobby": 1, "survival": 1}
    # every deletion the watch saw was one the rollout reported
    assert len(watcher.deletions) == 2 + 1 + 5
