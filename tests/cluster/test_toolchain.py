"""The cluster lane's own toolchain: a real control plane with kwok nodes, helm,
helmsman and ChartMuseum, all built by scripts/toolchain."""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
from pathlib import Path

import pytest
import requests
import yaml
from tests.fixtures.services import wait_until as wait_for

pytestmark = pytest.mark.cluster


def make_chart(root: Path, name: str, version: str = "0.1.0") -> Path:
    chart = root / name
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: v2
        name: {name}
        version: {version}
        appVersion: "1.0"
        """))
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-cm
        data:
          greeting: {{ .Values.greeting | quote }}
          installedAt: {{ now | date "2006-01-02T15:04:05.000000000Z07:00" | quote }}
        """))
    return chart


def push_chart(helm, chartmuseum, chart_dir: Path, dest: Path) -> None:
    helm.run("package", str(chart_dir), "-d", str(dest))
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    tgz = dest / f"{meta['name']}-{meta['version']}.tgz"
    resp = requests.post(f"{chartmuseum.url}/api/charts", data=tgz.read_bytes(), timeout=30)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"saved": True}


def test_server_version_is_1_32(kube):
    version = json.loads(kube.kubectl("get", "--raw", "/version").stdout)
    assert re.fullmatch(r"v1\.32\.\d+", version["gitVersion"]), version
    assert version["major"] == "1" and version["minor"] == "32"


def test_fake_nodes_are_ready(kube):
    nodes = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n["status"]["conditions"])]
    assert len(ready) >= 1


def test_deployment_becomes_available(kube, namespace):
    from kubernetes import client

    apps = client.AppsV1Api(kube.api_client())
    labels = {"app": "gs"}
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="gs"),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="gs", image="registry.invalid/gs:1")]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, dep)

    def available():
        d = apps.read_namespaced_deployment("gs", namespace)
        return (d.status.available_replicas or 0) == d.spec.replicas == 3

    wait_for(available, 90, what="deployment gs available")
    pods = client.CoreV1Api(kube.api_client()).list_namespaced_pod(namespace, label_selector="app=gs").items
    assert len(pods) == 3
    assert all(p.status.pod_ip for p in pods), [p.status.pod_ip for p in pods]
    assert all(p.spec.node_name for p in pods)


def test_job_from_cronjob_completes(kube, namespace):
    cron = {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {"backoffLimit": 0,
                 "template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "task", "image": "registry.invalid/task:1"}]}}}}},
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(cron))
    kube.kubectl("create", "job", "nightly-manual", "--from=cronjob/nightly", "-n", namespace)

    def complete():
        job = json.loads(kube.kubectl("get", "job", "nightly-manual", "-n", namespace, "-o", "json").stdout)
        return any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"].get("conditions", []))

    wait_for(complete, 90, what="job nightly-manual Complete")
    job = json.loads(kube.kubectl("get", "job", "nightly-manual", "-n", namespace, "-o", "json").stdout)
    assert job["status"]["succeeded"] == 1
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"


def test_helm_install_from_chartmuseum(kube, helm, chartmuseum, namespace, tmp_path):
    push_chart(helm, chartmuseum, make_chart(tmp_path / "src", "hello"), tmp_path)
    index = yaml.safe_load(requests.get(f"{chartmuseum.url}/index.yaml", timeout=10).text)
    assert [v["version"] for v in index["entries"]["hello"]] == ["0.1.0"]

    helm.run("repo", "add", "slipway-test", chartmuseum.url)
    helm.run("repo", "update")
    helm.run("install", "hello", "slipway-test/hello", "--version", "0.1.0", "-n", namespace,
             "--set", "greeting=hi", "--wait", "--timeout", "60s")
    status = json.loads(helm.run("status", "hello", "-n", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    cm = json.loads(kube.kubectl("get", "configmap", "hello-cm", "-n", namespace, "-o", "json").stdout)
    assert cm["data"]["greeting"] == "hi"


def _parse_helm_time(value: str) -> dt.datetime:
    # e.g. 2026-11-22T03:00:00.123456789Z or ...+00:00; keep microseconds
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
    assert m, value
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return dt.datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}")


def test_helmsman_applies_releases_in_priority_order(kube, toolchain, helm, chartmuseum, namespace, tmp_path):
    push_chart(helm, chartmuseum, make_chart(tmp_path / "src", "backend"), tmp_path)
    push_chart(helm, chartmuseum, make_chart(tmp_path / "src", "frontend"), tmp_path)
    dsf = tmp_path / "dsf.yaml"
    # listed in the opposite order of their priorities: helmsman must sort
    dsf.write_text(yaml.safe_dump({
        "context": "slipway-test",
        "namespaces": {namespace: {}},
        "helmRepos": {"slipway-test": chartmuseum.url},
        "apps": {
            "frontend": {"namespace": namespace, "enabled": True, "chart": "slipway-test/frontend",
                         "version": "0.1.0", "priority": -1},
            "backend": {"namespace": namespace, "enabled": True, "chart": "slipway-test/backend",
                        "version": "0.1.0", "priority": -10},
        },
    }, sort_keys=False))
    import subprocess

    proc = subprocess.run([toolchain.bin("helmsman"), "--apply", "--no-banner", "-f", str(dsf)],
                          capture_output=True, text=True, env=helm.env, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    releases = {r["name"]: r for r in json.loads(helm.run("list", "-n", namespace, "-o", "json").stdout)}
    assert set(releases) == {"backend", "frontend"}
    assert all(r["status"] == "deployed" for r in releases.values())
    deployed_at = {}
    for name in ("backend", "frontend"):
        history = json.loads(helm.run("history", name, "-n", namespace, "-o", "json").stdout)
        assert len(history) == 1 and history[0]["status"] == "deployed"
        deployed_at[name] = _parse_helm_time(history[0]["updated"])
    assert deployed_at["backend"] < deployed_at["frontend"], deployed_at
    out = proc.stdout
    assert out.find("backend") < out.find("frontend"), out


def _gss(name: str, replicas) -> dict:
    return {
        "apiVersion": "game.kruise.io/v1alpha1", "kind": "GameServerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                "podUpdatePolicy": "InPlaceIfPossible", "maxUnavailable": "25%", "partition": 0}},
            "gameServerTemplate": {
                "metadata": {"labels": {"game": "arena"}},
                "spec": {"containers": [{"name": "arena", "image": "registry.example/arena:1.2.3",
                                         "ports": [{"containerPort": 7777, "protocol": "UDP"}]}]},
            },
            "updatePriorityConfigs": [{"weight": 10, "matchLabels": {"tier": "idle"}}],
        },
    }


def test_gameserverset_crd_validates(kube, namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(kube.api_client())
    args = ("game.kruise.io", "v1alpha1", namespace, "gameserversets")
    created = api.create_namespaced_custom_object(*args, _gss("arena", 2))
    assert created["spec"]["replicas"] == 2
    assert created["spec"]["gameServerTemplate"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 7777

    for bad in (_gss("bad-replicas", "two"),):
        with pytest.raises(ApiException) as err:
            api.create_namespaced_custom_object(*args, bad)
        assert err.value.status == 422, err.value.body
        assert "spec.replicas" in err.value.body

    # podUpdatePolicy is a free string and the pod template is not schema-checked in
    # OpenKruiseGame's own CRD (which the chart ships): the real OKG/Kruise webhooks and
    # controllers judge those (tests/cluster/test_okg_gameservers.py).

    # status subresource: writable through /status, short name resolves
    api.patch_namespaced_custom_object_status(*args, "arena", {"status": {
        "replicas": 2, "currentReplicas": 2, "availableReplicas": 1, "readyReplicas": 1,
        "updatedReplicas": 2, "observedGeneration": 1, "labelSelector": "game=arena"}})
    got = json.loads(kube.kubectl("get", "gss", "arena", "-n", namespace, "-o", "json").stdout)
    assert got["status"]["readyReplicas"] == 1
    assert got["status"]["updatedReplicas"] == 2
