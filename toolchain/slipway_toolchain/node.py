"""The cluster lane's real node: containerd + runc + bridge CNI + kubelet.

One schedulable node next to KWOK's fake ones, so that pods meant to run really
run.  It is tainted (``slipway.dev/real-node``) and labelled
(``slipway.dev/node=real``): the existing tests' pods keep landing on the KWOK
nodes, a pod meant to run carries the toleration and the node selector
(:func:`pod_placement`).

What it is made of
  kubelet     built from k8s.io/kubernetes v1.32.5 with the same wrapper module as
              the control plane (slipway_toolchain.kube_wrapper_gomod)
  pause       the pod sandbox image: toolchain/pause (static Go, sleeps until
              SIGTERM, reaps children) in a FROM-scratch image pushed to the
              local registry (oci_push)
  containerd  Debian's containerd 1.6 + runc 1.1, config under the state dir:
              pulls only from the local registry over plain HTTP
  CNI         Debian's containernetworking-plugins: a bridge ``slipway<i>`` with
              gateway 10.88.<i>.1/24 created by `up`; pods get 10.88.<i>.0/24
              addresses in network namespaces made by CNI on this machine.  The
              node's InternalIP is the gateway, so the API server reaches the
              kubelet (logs, exec) on an address of the bridge we made.

Facts of these machines it adapts to: cgroup v1 with the cgroupfs driver; a
negative oom_score_adj is refused (gVisor), so containerd runs with
``restrict_oom_score_adj`` (the kubelet asks -998 for every sandbox); the
kubelet leaves the host's iptables alone (``makeIPTablesUtilChains: false``).

`teardown` removes every container, sandbox network namespace, mount, cgroup,
the bridge and the /var/log/containers links the node made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import oci_push

import slipway_toolchain as st

NODE_NAME = "slipway-node"
NODE_LABEL = ("slipway.dev/node", "real")
NODE_TAINT = ("slipway.dev/real-node", "true", "NoSchedule")
PAUSE_RECIPE = "1"
PAUSE_REPO = "slipway/pause"
CNI_BIN_DIR = "/usr/lib/cni"
BRIDGE_PREFIX = "slipway"
MAX_NODES = 32  # bridge slipway<i>, subnet 10.88.<i>.0/24
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOGS_LINKS = Path("/var/log/containers")  # fixed in the kubelet
NODE_BINARIES = ("kubelet", "pause")
NODE_STATE_ENTRIES = ("node",)


def pod_placement() -> dict:
    """Pod spec fields that put a pod on the real node."""
    return {"nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
            "tolerations": [{"key": NODE_TAINT[0], "operator": "Exists", "effect": NODE_TAINT[2]}]}


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------

def build_kubelet(tc: st.Toolchain) -> None:
    st._build_kube(tc, ("kubelet",))


def build_pause(tc: st.Toolchain) -> None:
    log = tc.logdir / "build-pause.log"
    tc.logdir.mkdir(parents=True, exist_ok=True)
    out = tc.srcdir / "pause" / "out"
    out.mkdir(parents=True, exist_ok=True)
    env = st._go_env()
    env["CGO_ENABLED"] = "0"
    st._run_logged([st.go_binary(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "pause"), "."],
                   log, cwd=st.HERE / "pause", env=env)
    st._install_atomically(out / "pause", tc.bindir / "pause")


BUILDERS = [
    (("kubelet",), build_kubelet),
    (("pause",), build_pause),
]


def push_pause_image(tc: st.Toolchain, registry: str) -> str:
    """Push the sandbox image; returns the reference containerd is configured with."""
    tag = f"r{PAUSE_RECIPE}"
    oci_push.push_image(registry, PAUSE_REPO, tag, {"pause": Path(tc.bin("pause"))}, ["/pause"],
                        user="65535:65535")
    return f"{registry}/{PAUSE_REPO}:{tag}"


# --------------------------------------------------------------------------
# Configuration files
# --------------------------------------------------------------------------

def containerd_config(d: Path, registry: str, sandbox_image: str, cni_conf_dir: Path) -> str:
    return f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.opt"]
[grpc]
  address = "{d / 'containerd.sock'}"
[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d / 'certs.d'}"
"""


def registry_hosts_toml(registry: str) -> str:
    return (f'server = "http://{registry}"\n'
            f'[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n')


def allow_registry(node_dir: Path, registry: str) -> None:
    """Pull from ``registry`` (host:port on this machine) over plain HTTP; containerd reads
    certs.d on every pull."""
    d = Path(node_dir) / "containerd" / "certs.d" / registry
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(registry_hosts_toml(registry))


def cni_conflist(bridge: str, subnet: str, gateway: str, ipam_dir: Path) -> str:
    return json.dumps({
        "cniVersion": "0.4.0", "name": "slipway",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": subnet, "gateway": gateway}]]}},
            {"type": "loopback"},
        ],
    }, indent=2)


def kubelet_config(*, address: str, port: int, healthz_port: int, ca_file: str, runtime_socket: Path,
                   cgroup_root: str, pod_logs_dir: Path) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca_file}}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{runtime_socket}
podLogsDir: {pod_logs_dir}
failSwapOn: false
makeIPTablesUtilChains: false
clusterDomain: cluster.local
resolvConf: ""
evictionHard: {{"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 40
registerWithTaints: [{{key: {NODE_TAINT[0]}, value: "{NODE_TAINT[1]}", effect: {NODE_TAINT[2]}}}]
"""


# --------------------------------------------------------------------------
# Host resources: bridge, cgroup root
# --------------------------------------------------------------------------

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise st.ClusterStartError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def claim_bridge() -> int:
    """Create the first free bridge slipway<i>; creating it is the claim (atomic in the kernel)."""
    for i in range(MAX_NODES):
        if _ip("link", "add", f"{BRIDGE_PREFIX}{i}", "type", "bridge", check=False).returncode == 0:
            return i
    raise st.ClusterStartError(f"no free bridge {BRIDGE_PREFIX}0..{MAX_NODES - 1} (other nodes running?)")


def cgroup_hierarchies(with_unified: bool = False) -> list[Path]:
    """The cgroup v1 hierarchies (one directory per mounted controller set); with the
    hybrid layout's cgroup2 mount too (the kubelet creates its cgroups there as well)."""
    types = ("cgroup", "cgroup2") if with_unified else ("cgroup",)
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[0] in types and fields[4].startswith(str(CGROUP_ROOT) + "/"):
            out.append(Path(fields[4]))
    return out


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirnames, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _mountpoints_under(prefixes: list[str]) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
            found.append(mp)
    return found


def _umount_all(prefixes: list[str]) -> None:
    for mp in sorted(set(_mountpoints_under(prefixes)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30, check=False)


# --------------------------------------------------------------------------
# Start / stop
# --------------------------------------------------------------------------

def start(cluster: st.Cluster, registry: str, timeout: float = 180.0) -> dict:
    """Start containerd and the kubelet for ``cluster``; wait until the node is Ready."""
    tc = cluster.tc
    d = cluster.state_dir / "node"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    i = claim_bridge()
    bridge, gateway, subnet = f"{BRIDGE_PREFIX}{i}", f"10.88.{i}.1", f"10.88.{i}.0/24"
    info = {"bridge": bridge, "gateway": gateway, "subnet": subnet, "dir": str(d), "name": NODE_NAME,
            "cgroup_root": f"/slipway-node-{i}", "containerd_socket": str(d / "containerd" / "containerd.sock")}
    cluster.info["node"] = info
    cluster._write_state(partial=True)
    _ip("addr", "add", f"{gateway}/24", "dev", bridge)
    _ip("link", "set", bridge, "up")
    for h in cgroup_hierarchies():
        (h / info["cgroup_root"].lstrip("/")).mkdir(exist_ok=True)

    sandbox_image = push_pause_image(tc, registry)
    cd = d / "containerd"
    allow_registry(d, registry)
    (d / "cni").mkdir()
    (d / "cni" / "10-slipway.conflist").write_text(cni_conflist(bridge, subnet, gateway, d / "cni-ipam"))
    (cd / "config.toml").write_text(containerd_config(cd, registry, sandbox_image, d / "cni"))
    containerd = cluster._spawn("containerd", ["containerd", "--config", str(cd / "config.toml")])
    cluster._wait("containerd", lambda: _ctr(info, "version").returncode == 0, containerd, timeout)

    port, healthz = st.free_port(), st.free_port()
    (d / "kubelet-config.yaml").write_text(kubelet_config(
        address=gateway, port=port, healthz_port=healthz, ca_file=cluster.info["ca_file"],
        runtime_socket=cd / "containerd.sock", cgroup_root=info["cgroup_root"], pod_logs_dir=d / "pod-logs"))
    token = cluster.tokens()["kubelet"]
    cluster._kubeconfig(d / "kubelet.kubeconfig", cluster.info["server"], f"system:node:{NODE_NAME}", token)
    kubelet = cluster._spawn("kubelet", [
        tc.bin("kubelet"), f"--config={d / 'kubelet-config.yaml'}", f"--kubeconfig={d / 'kubelet.kubeconfig'}",
        f"--root-dir={d / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={gateway}",
        f"--node-labels={NODE_LABEL[0]}={NODE_LABEL[1]}", "--v=1",
    ])
    healthz_url = f"http://127.0.0.1:{healthz}/healthz"
    cluster._wait("kubelet /healthz", lambda: st._http_get(healthz_url)[0] == 200, kubelet, timeout)

    def ready() -> bool:
        node = cluster._api_json(f"/api/v1/nodes/{NODE_NAME}") or {}
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node.get("status", {}).get("conditions", []))
    cluster._wait(f"node {NODE_NAME} Ready", ready, kubelet, timeout)
    cluster._write_state(partial=True)
    return info


def _ctr(info: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "-a", info["containerd_socket"], "-n", "k8s.io", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def _stop_named(cluster: st.Cluster, state: dict, name: str, timeout: float = 20.0) -> None:
    for entry in state.get("processes", []):
        if entry["name"] != name or not st._pid_alive(entry["pid"], entry.get("starttime")):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], 15)
        deadline = time.monotonic() + timeout
        while st._pid_alive(entry["pid"], entry.get("starttime")) and time.monotonic() < deadline:
            cluster._reap(entry["pid"])
            st._pause(0.05)
        if st._pid_alive(entry["pid"], entry.get("starttime")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry["pid"], 9)
        cluster._reap(entry["pid"])


def _sandbox_netns(info: dict, container_id: str) -> str | None:
    proc = _ctr(info, "containers", "info", container_id)
    if proc.returncode != 0:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        for ns in json.loads(proc.stdout)["Spec"]["linux"]["namespaces"]:
            path = os.path.realpath(ns.get("path", ""))  # /var/run -> /run, as in mountinfo
            if ns["type"] == "network" and path.startswith("/run/netns/"):
                return path
    return None


def teardown(cluster: st.Cluster, state: dict) -> None:
    """Stop the kubelet, remove every container and sandbox, stop containerd, then remove
    the network namespaces, mounts, cgroups, bridge and log links the node made."""
    info = state.get("node")
    if not info:
        return
    d = Path(info["dir"])
    _stop_named(cluster, state, "kubelet")
    netns: set[str] = set()
    if Path(info["containerd_socket"]).exists() and _ctr(info, "version").returncode == 0:
        ids = _ctr(info, "containers", "ls", "-q").stdout.split()
        for cid in ids:
            ns = _sandbox_netns(info, cid)
            if ns:
                netns.add(ns)
        for cid in ids:
            _ctr(info, "tasks", "kill", "-s", "SIGKILL", cid)
        for cid in ids:
            _ctr(info, "tasks", "delete", "-f", cid)
            _ctr(info, "containers", "delete", cid)
    _stop_named(cluster, state, "containerd")
    _umount_all([str(d)] + sorted(netns))
    for ns in netns:
        with contextlib.suppress(OSError):
            os.unlink(ns)
    for h in cgroup_hierarchies(with_unified=True):
        _remove_cgroup_tree(h / info["cgroup_root"].lstrip("/"))
    _ip("link", "delete", info["bridge"], check=False)
    pod_logs = str(d / "pod-logs")
    if CONTAINER_LOGS_LINKS.is_dir():
        for link in CONTAINER_LOGS_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(pod_logs):
                    link.unlink()
