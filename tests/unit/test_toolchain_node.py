"""The real node's and OpenKruiseGame's recipes (slipway_toolchain.node, .okg, toolchain/oci_push.py): what
they write, without starting anything."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "toolchain"))

import oci_push
from slipway_toolchain import node, okg


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_pause_image_is_reproducible_and_points_at_its_own_blobs(tmp_path):
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    first = oci_push.image_blobs({"pause": binary}, ["/pause"], user="65535:65535")
    assert oci_push.image_blobs({"pause": binary}, ["/pause"], user="65535:65535") == first
    config, layer, manifest = first
    m = json.loads(manifest)
    assert m["config"]["digest"] == _sha(config) and m["layers"][0]["digest"] == _sha(layer)
    tar = gzip.decompress(layer)
    assert json.loads(config)["rootfs"]["diff_ids"] == [_sha(tar)]
    assert json.loads(config)["config"] == {"Entrypoint": ["/pause"], "User": "65535:65535", "Env": []}
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        [member] = t.getmembers()
        assert (member.name, member.mode, member.mtime, member.uid) == ("pause", 0o755, 0, 0)


def test_nested_files_get_their_directories(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with tarfile.open(fileobj=io.BytesIO(oci_push.layer_tar({"www/cgi-bin/reload": f}))) as t:
        assert [(m.name, m.isdir()) for m in t.getmembers()] == [
            ("www", True), ("www/cgi-bin", True), ("www/cgi-bin/reload", False)]


def test_containerd_pulls_only_from_the_local_registry_over_plain_http(tmp_path):
    hosts = node.registry_hosts_toml("127.0.0.1:5000")
    assert 'server = "http://127.0.0.1:5000"' in hosts and "https" not in hosts
    cfg = node.containerd_config(tmp_path, "127.0.0.1:5000", "127.0.0.1:5000/slipway/pause:r1", tmp_path / "cni")
    assert 'sandbox_image = "127.0.0.1:5000/slipway/pause:r1"' in cfg
    assert "restrict_oom_score_adj = true" in cfg          # a negative oom_score_adj is refused here
    assert "SystemdCgroup = false" in cfg                   # cgroupfs, like the kubelet
    assert 'stream_server_address = "127.0.0.1"' in cfg     # exec/attach streams stay on loopback
    assert f'config_path = "{tmp_path / "certs.d"}"' in cfg


def test_pod_addresses_stay_on_the_bridge_we_make(tmp_path):
    conf = json.loads(node.cni_conflist("slipway3", "10.88.3.0/24", "10.88.3.1", tmp_path / "ipam"))
    bridge = conf["plugins"][0]
    assert (bridge["type"], bridge["bridge"], bridge["ipMasq"]) == ("bridge", "slipway3", False)
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.88.3.0/24", "gateway": "10.88.3.1"}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")


def test_kubelet_is_tainted_authenticated_and_leaves_iptables_alone(tmp_path):
    cfg = yaml.safe_load(node.kubelet_config(
        address="10.88.0.1", port=1234, healthz_port=1235, ca_file="/ca.crt", runtime_socket=tmp_path / "c.sock",
        cgroup_root="/slipway-node-0", pod_logs_dir=tmp_path / "logs"))
    assert cfg["makeIPTablesUtilChains"] is False
    assert cfg["authentication"]["anonymous"]["enabled"] is False and cfg["readOnlyPort"] == 0
    assert cfg["healthzBindAddress"] == "127.0.0.1" and cfg["address"] == "10.88.0.1"
    assert cfg["cgroupDriver"] == "cgroupfs" and cfg["cgroupRoot"] == "/slipway-node-0"
    assert cfg["registerWithTaints"] == [{"key": "slipway.dev/real-node", "value": "true", "effect": "NoSchedule"}]
    placement = node.pod_placement()
    assert placement["nodeSelector"] == {"slipway.dev/node": "real"}
    assert placement["tolerations"][0]["key"] == "slipway.dev/real-node"


def test_kruise_wrapper_keeps_its_replaces_and_requires_kruise():
    src = "module github.com/openkruise/kruise\n\ngo 1.22\n\nreplace (\n\tk8s.io/api => k8s.io/api v0.30.10\n)\n"
    out = okg.kruise_wrapper_gomod(src)
    assert "module slipway.local/toolchain/kruise\n" in out
    assert "k8s.io/api => k8s.io/api v0.30.10" in out
    assert out.rstrip().endswith("require github.com/openkruise/kruise v1.8.0")


def test_okg_webhooks_mirror_okgs_own_rules_on_a_loopback_url():
    mutating, validating = okg.okg_webhook_manifests(4444, "Q0E=")
    [m] = mutating["webhooks"]
    assert m["clientConfig"] == {"url": "https://127.0.0.1:4444/mutate-v1-pod", "caBundle": "Q0E="}
    assert m["objectSelector"]["matchExpressions"] == [{"key": "game.kruise.io/owner-gss", "operator": "Exists"}]
    assert m["rules"][0]["operations"] == ["CREATE", "UPDATE", "DELETE"]
    [v] = validating["webhooks"]
    assert v["clientConfig"]["url"] == "https://127.0.0.1:4444/validate-v1alpha1-gss"
    assert v["rules"][0]["resources"] == ["gameserversets"]
