"""Kubernetes and Helm targets against the real API server (kube-apiserver, controller-manager,
scheduler, KWOK nodes): only the named container changes, rollouts are waited on, and a
mutable tag is written as ``repo:tag@sha256:...``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from poller.config import parse_config
from poller.store import Store
from poller.updater.build import build_engine
from poller.updater.history import UpdateHistory
from poller.updater.target_factory import TargetFactory
from tests.integration.updater_support import seed_tag

pytestmark = [pytest.mark.cluster, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def workload(kind: str, name: str, image: str, sidecar: str, replicas: int = 2) -> dict:
    labels = {"app": name}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [
        {"name": "engine", "image": image}, {"name": "sidecar", "image": sidecar}]}}
    spec: dict = {"selector": {"matchLabels": labels}, "template": template}
    if kind != "DaemonSet":
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def get(kube, kind: str, name: str, ns: str) -> dict:
    return json.loads(kube.kubectl("get", kind.lower(), name, "-n", ns, "-o", "json").stdout)


def images(obj: dict) -> dict:
    spec = obj["spec"].get("template", obj["spec"].get("gameServerTemplate"))["spec"]
    return {c["name"]: c["image"] for c in spec["containers"]}


def engine(tmp_path, registry, kube, deployments, **updates):
    data = {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "updates": {"kubeconfig": kube.kubeconfig, "deployments": deployments, **updates}}
    cfg = parse_config(data, file="t.yaml", env={})
    return build_engine(cfg, Store(tmp_path / "s.db"),
                        targets=TargetFactory(cfg.updates, rollout_timeout=120))


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
def test_semver_update_patches_only_the_container_and_waits(kind, tmp_path, registry, kube, namespace, closing):
    repo = f"{registry.addr}/game"
    seed_tag(registry, "game", "1.0.0")
    seed_tag(registry, "game", "1.1.0")
    kube.kubectl("apply", "-n", namespace, "-f", "-",
                 input=yaml.safe_dump(workload(kind, "game", f"{repo}:1.0.0", "busybox:sidecar-v1")))
    eng = closing(engine(tmp_path, registry, kube, [
        {"name": "game", "image": repo, "policy": "minor",
         "target": {"kubernetes": {"kind": kind, "name": "game", "namespace": namespace,
                                   "container": "engine"}}}]))
    [o] = eng.cycle()
    assert (o.action, o.from_ref, o.to_ref) == ("updated", "1.0.0", "1.1.0"), o
    obj = get(kube, kind, "game", namespace)
    assert images(obj) == {"engine": f"{repo}:1.1.0", "sidecar": "busybox:sidecar-v1"}
    # the engine returned only once the controller had rolled it out
    st = obj["status"]
    assert st["observedGeneration"] >= obj["metadata"]["generation"]
    if kind == "DaemonSet":
        assert st["updatedNumberScheduled"] == st["desiredNumberScheduled"] == st["numberAvailable"] > 0
    else:
        assert st["updatedReplicas"] == 2 and st.get("availableReplicas", st.get("readyReplicas")) == 2
    pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", "app=game", "-o", "json").stdout)
    live = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    assert live and all(images({"spec": {"template": {"spec": p["spec"]}}})["engine"] == f"{repo}:1.1.0"
                        for p in live)
    rec = UpdateHistory(eng.store).list()[0]
    assert rec.status == "succeeded" and rec.detail["target"]["kind"] == kind
    assert [o.action for o in eng.cycle()] == ["up-to-date"]


def test_mutable_tag_written_with_digest(tmp_path, registry, kube, namespace, closing):
    repo = f"{registry.addr}/game"
    d1 = seed_tag(registry, "game", "staging", build="one")
    kube.kubectl("apply", "-n", namespace, "-f", "-",
                 input=yaml.safe_dump(workload("Deployment", "stg", f"{repo}:staging", "busybox:s")))
    eng = closing(engine(tmp_path, registry, kube, [
        {"name": "stg", "image": repo, "policy": "digest", "tag": "staging",
         "target": {"kubernetes": {"kind": "Deployment", "name": "stg", "namespace": namespace,
                                   "container": "engine"}}}]))
    [o] = eng.cycle()
    assert o.action == "updated" and o.to_ref == f"staging@{d1}"
    assert images(get(kube, "Deployment", "stg", namespace))["engine"] == f"{repo}:staging@{d1}"
    d2 = seed_tag(registry, "game", "staging", build="two")
    [o] = eng.cycle()
    assert (o.action, o.from_ref, o.to_ref) == ("updated", f"staging@{d1}", f"staging@{d2}")
    assert images(get(kube, "Deployment", "stg", namespace))["engine"] == f"{repo}:staging@{d2}"


def test_unhealthy_rollout_is_reported_not_retried(tmp_path, registry, kube, namespace, closing):
    repo = f"{registry.addr}/game"
    seed_tag(registry, "game", "1.0.0")
    seed_tag(registry, "game", "1.0.1")
    w = workload("Deployment", "stuck", f"{repo}:1.0.0", "busybox:s", replicas=1)
    w["spec"]["template"]["spec"]["nodeSelector"] = {"no-such-node": "true"}  # new pods never schedule
    w["spec"]["strategy"] = {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(w))
    data = {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "updates": {"kubeconfig": kube.kubeconfig, "deployments": [
                {"name": "stuck", "image": repo, "policy": "patch",
                 "target": {"kubernetes": {"kind": "Deployment", "name": "stuck", "namespace": namespace,
                                           "container": "engine"}}}]}}
    cfg = parse_config(data, file="t.yaml", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates, rollout_timeout=3)))
    [o] = eng.cycle()
    assert o.action == "failed" and "not healthy" in o.detail
    assert UpdateHistory(eng.store).list()[0].status == "failed"
    [o] = eng.cycle()
    assert o.action == "up-to-date"          # the spec is on 1.0.1: no second attempt
    assert len(UpdateHistory(eng.store).list()) == 1


def test_helm_release_upgraded_keeping_its_values(tmp_path, registry, kube, namespace, helm, closing):
    repo = f"{registry.addr}/game-server"
    seed_tag(registry, "game-server", "1.0.0")
    seed_tag(registry, "game-server", "1.2.0")
    chart = str(ROOT / "charts" / "game-server")
    helm.run("install", "game", chart, "-n", namespace, "--set", f"engine.image.repository={repo}",
             "--set", "engine.image.tag=1.0.0", "--set", "replicas=2", "--set", "hotUpdate.enabled=false",
             "--wait", "--timeout", "120s")
    data = {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "updates": {"kubeconfig": kube.kubeconfig, "helm": helm.bin, "deployments": [
                {"name": "game", "image": repo, "policy": "minor",
                 "target": {"helm": {"release": "game", "namespace": namespace, "chart": chart,
                                     "value_path": "engine.image.tag"}}}]}}
    cfg = parse_config(data, file="t.yaml", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates, rollout_timeout=120)))
    [o] = eng.cycle()
    assert (o.action, o.from_ref, o.to_ref) == ("updated", "1.0.0", "1.2.0"), o
    values = json.loads(helm.run("get", "values", "game", "-n", namespace, "-o", "json").stdout)
    assert values["engine"]["image"] == {"repository": repo, "tag": "1.2.0"}
    assert values["replicas"] == 2 and values["hotUpdate"]["enabled"] is False
    rec = UpdateHistory(eng.store).list()[0]
    assert (rec.detail["target"]["from_revision"], rec.detail["target"]["to_revision"]) == (1, 2)
    deployments = json.loads(kube.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(c["image"] == f"{repo}:1.2.0" for d in deployments
               for c in d["spec"]["template"]["spec"]["containers"])
    assert [o.action for o in eng.cycle()] == ["up-to-date"]


# GameServerSet without ``rollout:`` (OpenKruiseGame rolls it out, Slipway waits on its status):
# tests/cluster/test_okg_gameservers.py, against the real OpenKruiseGame and Kruise.
