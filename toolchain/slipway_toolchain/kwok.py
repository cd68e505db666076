"""kwok: fake nodes for scale tests (they pretend to run pods).

Recipe: ``go install sigs.k8s.io/kwok/cmd/kwok@vKWOK_VERSION``; its stages (node-initialize,
node-heartbeat-with-lease, pod-ready, pod-complete, pod-delete) are taken from the module into
``<cache>/kwok-stages.yaml``. Starts on 127.0.0.1 managing only nodes annotated
FAKE_NODE_ANNOTATION; ready on ``/healthz``, then ``fake_nodes_yaml`` is applied and the cluster
waits for the nodes to be Ready. Stopped with the cluster's processes (TERM, then KILL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .base import _go_install, _go_mod_download, _http_get

if TYPE_CHECKING:
    from .cache import Toolchain

KWOK_VERSION = "0.8.0"
BINARIES = ("kwok",)
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def _build_kwok(tc: Toolchain) -> None:
    _go_install(tc, "kwok", f"sigs.k8s.io/kwok/cmd/kwok@v{KWOK_VERSION}",
                f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v{KWOK_VERSION}")


def _build_kwok_stages(tc: Toolchain) -> None:
    log = tc.logdir / "build-kwok.log"
    tc.logdir.mkdir(parents=True, exist_ok=True)
    info = _go_mod_download(f"sigs.k8s.io/kwok@v{KWOK_VERSION}", log)
    docs = []
    for rel in KWOK_STAGES:
        text = (Path(info["Dir"]) / rel).read_text().strip()
        docs.append(f"# from sigs.k8s.io/kwok@v{KWOK_VERSION}/{rel}\n{text}\n")
    tmp = tc.kwok_stages.with_suffix(".tmp")
    tmp.write_text("---\n".join(docs))
    os.replace(tmp, tc.kwok_stages)



def start(cluster, ports: dict):
    """Start kwok (see :func:`wait_ready`); returns its process."""
    tc = cluster.tc
    return cluster._spawn("kwok", [
        tc.bin("kwok"), f"--kubeconfig={cluster.state_dir / 'kwok.kubeconfig'}",
        f"--config={tc.kwok_stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION[0]}={FAKE_NODE_ANNOTATION[1]}",
        "--node-lease-duration-seconds=40", "--cidr=10.244.0.1/16", "--node-ip=127.0.0.1",
        f"--server-address=127.0.0.1:{ports['kwok']}",
    ])


def wait_ready(cluster, ports: dict, proc, timeout: float) -> None:
    kw_url = f"http://127.0.0.1:{ports['kwok']}/healthz"
    cluster._wait("kwok /healthz", lambda: _http_get(kw_url)[0] == 200, proc, timeout)


def add_nodes(cluster, nodes: int, proc, timeout: float) -> None:
    """Create ``nodes`` fake nodes and wait until kwok reports them Ready."""
    cluster.kubectl("apply", "-f", "-", input=fake_nodes_yaml(nodes))

    def nodes_ready() -> bool:
        items = (cluster._api_json("/api/v1/nodes") or {}).get("items", [])
        ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in n.get("status", {}).get("conditions", []))]
        return len(ready) >= nodes
    cluster._wait(f"{nodes} fake nodes Ready", nodes_ready, proc, timeout)


def fake_nodes_yaml(count: int) -> str:
    docs = []
    for i in range(count):
        name = f"kwok-node-{i}"
        docs.append(f"""apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    {FAKE_NODE_ANNOTATION[0]}: {FAKE_NODE_ANNOTATION[1]}
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
""")
    return "---\n".join(docs)

