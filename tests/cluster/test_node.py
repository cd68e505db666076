"""The real node of the cluster lane (containerd + runc + bridge CNI + kubelet, toolchain/slipway_toolchain/node.py):
images are really pulled from the registry, containers really run, logs and exec reach them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from poller.config import parse_config
from poller.store import Store
from poller.updater.build import build_engine
from poller.updater.target_factory import TargetFactory
from tests.fixtures.cluster import st
from tests.fixtures.services import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.integration]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def push_game(node, registry, tag: str) -> str:
    """A runnable FROM-scratch image (static busybox) that logs its version and serves HTTP."""
    ref = node.push_image(registry.addr, "game", tag, {"bin/busybox": Path(BUSYBOX)},
                          ["/bin/busybox", "sh", "-c",
                           'echo "game $VERSION started"; exec /bin/busybox httpd -f -p 8080 -h /'],
                          env=[f"VERSION={tag}", "PATH=/bin"])
    return ref.split("@", 1)[1]


def deployment(name: str, image: str, placement: dict) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {**placement, "terminationGracePeriodSeconds": 1,
                                           "containers": [{"name": "engine", "image": image}]}}}}


def live_pods(kube, namespace: str, selector: str) -> list[dict]:
    pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def test_the_real_node_is_ready_tainted_and_the_kwok_nodes_stay(kube, node):
    nodes = {n["metadata"]["name"]: n for n in json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    real = nodes[node.name]
    assert real["status"]["nodeInfo"]["kubeletVersion"] == "v1.32.5"
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.")
    assert {"key": "slipway.dev/real-node", "value": "true", "effect": "NoSchedule"} in real["spec"]["taints"]
    [addr] = [a["address"] for a in real["status"]["addresses"] if a["type"] == "InternalIP"]
    assert addr == node.subnet.replace(".0/24", ".1")  # the bridge gateway: an address we made
    assert any(name.startswith("kwok-node-") for name in nodes)


def test_deployment_update_pulls_and_runs_the_new_image_with_logs_and_exec(tmp_path, registry, kube,
                                                                           namespace, node, closing):
    node.allow_registry(registry.addr)
    push_game(node, registry, "1.0.0")
    new_digest = push_game(node, registry, "1.1.0")
    repo = f"{registry.addr}/game"
    kube.kubectl("apply", "-n", namespace, "-f", "-",
                 input=yaml.safe_dump(deployment("game", f"{repo}:1.0.0", node.placement())))
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/game", "--timeout=120s", timeout=150)

    data = {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "updates": {"kubeconfig": kube.kubeconfig, "deployments": [
                {"name": "game", "image": repo, "policy": "minor",
                 "target": {"kubernetes": {"kind": "Deployment", "name": "game", "namespace": namespace,
                                           "container": "engine"}}}]}}
    cfg = parse_config(data, file="t.yaml", env={})
    eng = closing(build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates, rollout_timeout=120)))
    [o] = eng.cycle()
    assert (o.action, o.from_ref, o.to_ref) == ("updated", "1.0.0", "1.1.0"), o

    wait_until(lambda: len(live_pods(kube, namespace, "app=game")) == 1, 60, what="old pod gone")
    [pod] = live_pods(kube, namespace, "app=game")
    assert pod["spec"]["nodeName"] == node.name
    [cs] = pod["status"]["containerStatuses"]
    assert cs["ready"] and "running" in cs["state"]
    assert cs["image"] == f"{repo}:1.1.0"
    assert cs["imageID"] == f"{repo}@{new_digest}"  # the pushed manifest, really pulled
    assert cs["containerID"].startswith("containerd://")
    name = pod["metadata"]["name"]
    wait_until(lambda: "game 1.1.0 started" in kube.kubectl("logs", "-n", namespace, name).stdout, 30,
               what="the new container's log line")
    out = kube.kubectl("exec", "-n", namespace, name, "--", "/bin/busybox", "sh", "-c",
                       'echo "v=$VERSION pid1=$(cat /proc/1/cmdline | tr "\\0" " ")"').stdout
    assert "v=1.1.0" in out and "httpd" in out


def test_down_removes_the_nodes_pods_containers_netns_mounts_and_cgroups(toolchain, tmp_path, registry,
                                                                        shared_registry):
    c = st.Cluster(tmp_path / "c", toolchain._tc)
    try:
        info = c.up(nodes=1, node=True)
        nd = info["node"]
        st._node().allow_registry(Path(nd["dir"]), registry.addr)
        import oci_push

        oci_push.push_image(registry.addr, "sleeper", "1", {"bin/busybox": Path(BUSYBOX)},
                            ["/bin/busybox", "sleep", "3600"])
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {**st._node().pod_placement(), "containers": [
                   {"name": "c", "image": f"{registry.addr}/sleeper:1"}]}}
        c.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
        c.kubectl("wait", "--for=condition=Ready", "pod/p", "--timeout=90s")
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert str(tmp_path) in mountinfo  # rootfs, shm, the token volume
        netns = [ln.split()[4] for ln in mountinfo.splitlines() if ln.split()[4].startswith("/run/netns/cni-")]
        ours = [n for n in netns if Path(n).exists() and
                st._node()._sandbox_netns(nd, _sandbox_of(nd)) == n]
        assert ours, "the pod's sandbox has a network namespace pinned by CNI"
        procs = [(e["pid"], e["starttime"]) for e in c.load()["processes"] if e["name"] in ("containerd", "kubelet")]
        assert len(procs) == 2
    finally:
        c.down(quiet=True)
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mountinfo
    assert not any(n in mountinfo for n in ours) and not any(Path(n).exists() for n in ours)
    assert not any((h / nd["cgroup_root"].lstrip("/")).exists() for h in st._node().cgroup_hierarchies(True))
    assert not Path(f"/sys/class/net/{nd['bridge']}").exists()
    assert not any(os.readlink(p).startswith(nd["dir"]) for p in Path("/var/log/containers").iterdir()
                   if p.is_symlink())
    assert not any(st._pid_alive(pid, start) for pid, start in procs)


def _sandbox_of(nd: dict) -> str:
    node = st._node()
    ids = node._ctr(nd, "containers", "ls", "-q").stdout.split()
    return next(i for i in ids if node._sandbox_netns(nd, i))
