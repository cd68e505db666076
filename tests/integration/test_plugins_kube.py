"""Plugin rollouts on Kubernetes (the real control plane from scripts/toolchain, kwok nodes):
the pod template stamp moves only on the Deployments whose plugin set changed, in type order."""

from __future__ import annotations

import io
import zipfile

import pytest

from poller.artifacts.kube import STAMP, TYPE_LABEL, KubePluginRollout
from poller.artifacts.store import ArtifactStore
from poller.config import parse_config
from poller.registry.client import RegistryClient
from tests.fixtures.services import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def jar(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", text)
    return buf.getvalue()


def deployment(name: str, server_type: str) -> dict:
    labels = {"app": name, TYPE_LABEL: server_type}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "gs", "image": "registry.invalid/gs:1"}]}}}}


def test_annotation_bump_restarts_only_changed_types_in_order(kube, namespace, registry):
    from kubernetes import client

    apps = client.AppsV1Api(kube.api_client())
    cfg = parse_config({"registry": {"url": registry.addr, "insecure": True},
                        "plugins": {"server_types": {
                            "lobby": {"plugins": {"chat": "latest", "perms": "latest"}, "max_unavailable": 1},
                            "survival": {"plugins": {"perms": "latest"}, "depends_on": ["lobby"]}},
                            "environments": {"k8s": {"kubernetes_namespace": namespace}}}}, env={})
    store = ArtifactStore(RegistryClient(cfg.registry), "plugins")
    for plugin in ("chat", "perms"):
        store.push(plugin, jar(f"{plugin} 1"), "1.0.0")
    for name, t in (("lobby", "lobby"), ("survival", "survival")):
        apps.create_namespaced_deployment(namespace, deployment(name, t))
    rollout = KubePluginRollout(cfg.plugins, store, apps)

    def settled(name):
        d = apps.read_namespaced_deployment(name, namespace)
        return (d.status.observed_generation or 0) >= d.metadata.generation and \
            (d.status.updated_replicas or 0) == (d.status.available_replicas or 0) == (d.status.replicas or 0) == 2

    def gen(name):
        return apps.read_namespaced_deployment(name, namespace).metadata.generation

    first = rollout.cycle("k8s")
    assert first.restarted == ["lobby"] and first.waiting == ["survival"]
    d = apps.read_namespaced_deployment("lobby", namespace)
    assert d.spec.strategy.rolling_update.max_unavailable == 1
    wait_until(lambda: settled("lobby"), timeout=120, what="lobby rolled out")
    assert rollout.cycle("k8s").restarted == ["survival"]
    wait_until(lambda: settled("survival"), timeout=120, what="survival rolled out")
    assert rollout.cycle("k8s").restarted == []

    before = {n: gen(n) for n in ("lobby", "survival")}
    store.push("chat", jar("chat 2"), "1.1.0")  # only lobbies use chat
    assert rollout.cycle("k8s").restarted == ["lobby"]
    assert gen("lobby") == before["lobby"] + 1 and gen("survival") == before["survival"]
    stamp = apps.read_namespaced_deployment("lobby", namespace).spec.template.metadata.annotations[STAMP]
    wait_until(lambda: settled("lobby"), timeout=120, what="lobby rolled out again")
    pods = client.CoreV1Api(kube.api_client()).list_namespaced_pod(namespace, label_selector="app=lobby").items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    assert live and all(p.metadata.annotations.get(STAMP) == stamp for p in live)
