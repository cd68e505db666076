"""The helm API served over HTTP against the real control plane (kube-apiserver v1.32,
controller-manager, scheduler, KWOK nodes that run Jobs to completion)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from helm_api import MAX_BODY, create_app
from helm_api.config import HelmApiConfig
from poller.httpapi import serve as serve_wsgi
from tests.fixtures.services import wait_until as wait_for

pytestmark = pytest.mark.cluster

TOKEN = "cluster-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def cronjob_manifest(namespace: str, *, node_selector: dict | None = None,
                     name: str = "helmsman-cronjob") -> str:
    pod_spec = {
        "restartPolicy": "Never",
        "containers": [{"name": "helmsman", "image": "slipway-helmsman:test",
                        "command": ["sh", "-c", "echo helmsman --apply -f /dss/$(DSS_FILE)"],
                        "env": [{"name": "DSS_FILE", "value": "default.yaml"}]}],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"suspend": True, "schedule": "0 4 * * *", "jobTemplate": {
            "metadata": {"labels": {"app.kubernetes.io/name": "helmsman"},
                         "annotations": {"team": "sre"}},
            "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}}}},
    })


class Served:
    """The app under the same WSGI server ``helm-api`` uses (waitress, bounded body)."""

    def __init__(self, app):
        self.app = app
        self.server = serve_wsgi(app, "127.0.0.1:0", max_body=MAX_BODY, name="helm-api")
        self.url = f"http://127.0.0.1:{self.server.port}"

    @property
    def runner(self):
        return self.app.extensions["helm_api"]["runner"]

    def stop(self):
        self.server.close()
        self.runner.stop()


@pytest.fixture
def serve(kube):
    served: list[Served] = []

    def start(namespace: str, **overrides) -> Served:
        cfg = HelmApiConfig(token=TOKEN, namespace=namespace, follow_up_interval=0.2, **overrides)
        s = Served(create_app(cfg, kube=kube.api_client()))
        served.append(s)
        return s

    yield start
    for s in served:
        s.stop()


def our_jobs(kube, namespace: str) -> list[dict]:
    out = kube.kubectl("get", "jobs", "-n", namespace, "-l",
                       "app.kubernetes.io/managed-by=slipway-helm-api", "-o", "json").stdout
    return json.loads(out)["items"]


def test_apply_creates_a_job_from_the_cronjob_that_runs_to_completion(kube, namespace, serve):
    kube.kubectl("apply", "-f", "-", input=cronjob_manifest(namespace))
    cj = json.loads(kube.kubectl("get", "cronjob", "helmsman-cronjob", "-n", namespace,
                                 "-o", "json").stdout)
    api = serve(namespace)

    resp = requests.post(f"{api.url}/apply", headers=AUTH,
                         json={"environment": "production", "reason": "chart game-server 2.0.0"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["created"] and not body["follow_up_queued"]
    assert body["status_url"] == f"/jobs/{body['job']}"
    assert resp.headers["Location"] == body["status_url"]

    job = json.loads(kube.kubectl("get", "job", body["job"], "-n", namespace, "-o", "json").stdout)
    meta = job["metadata"]
    assert meta["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert meta["annotations"]["team"] == "sre"
    assert meta["annotations"]["slipway.dev/reason"] == "chart game-server 2.0.0"
    assert meta["labels"]["app.kubernetes.io/name"] == "helmsman"
    assert meta["labels"]["slipway.dev/environment"] == "production"
    [owner] = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "CronJob", "helmsman-cronjob", cj["metadata"]["uid"], True)
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DSS_FILE"] == "production.yaml"

    def finished():
        detail = requests.get(f"{api.url}/jobs/{body['job']}").json()
        return detail if detail["phase"] in ("succeeded", "failed") else None

    detail = wait_for(finished, 120, what="the helmsman job to finish")
    assert detail["phase"] == "succeeded"
    assert detail["environment"] == "production"
    assert detail["started_at"] and detail["finished_at"]
    assert detail["pod"] and "log" in detail

    listed = requests.get(f"{api.url}/jobs").json()
    assert [j["name"] for j in listed["jobs"]] == [body["job"]]
    assert listed["queued"] == {}


def test_concurrent_applies_collapse_into_one_follow_up(kube, namespace, serve):
    # Pods of this CronJob only schedule on a node carrying a label unique to this test, so
    # the first run stays active until the test lets it go.
    hold_key = f"slipway.test/hold-{namespace}"
    kube.kubectl("apply", "-f", "-", input=cronjob_manifest(namespace, node_selector={hold_key: "go"}))
    node = kube.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout.strip()
    api = serve(namespace)
    try:
        first = requests.post(f"{api.url}/apply", headers=AUTH, json={"environment": "staging"}).json()
        assert first["created"]

        def call(i):
            return requests.post(f"{api.url}/apply", headers=AUTH,
                                 json={"environment": "staging", "reason": f"push {i}"})

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(call, range(10)))
        assert {r.status_code for r in answers} == {202}
        assert {r.json()["job"] for r in answers} == {first["job"]}
        assert all(r.json()["follow_up_queued"] and not r.json()["created"] for r in answers)
        assert [j["metadata"]["name"] for j in our_jobs(kube, namespace)] == [first["job"]]
        queued = requests.get(f"{api.url}/jobs").json()["queued"]
        assert queued["staging"]["requests"] == 10 and queued["staging"]["after"] == first["job"]

        # a different environment is a different target: it starts at once
        prod = requests.post(f"{api.url}/apply", headers=AUTH, json={"environment": "production"}).json()
        assert prod["created"]

        kube.kubectl("label", "node", node, f"{hold_key}=go", "--overwrite")

        def follow_up():
            jobs = [j for j in our_jobs(kube, namespace)
                    if j["metadata"]["labels"]["slipway.dev/environment"] == "staging"]
            return jobs if len(jobs) == 2 else None

        jobs = wait_for(follow_up, 120, what="exactly one follow-up run")
        second = next(j for j in jobs if j["metadata"]["name"] != first["job"])
        assert second["metadata"]["annotations"]["slipway.dev/follows"] == first["job"]
        assert "push 3" in second["metadata"]["annotations"]["slipway.dev/reason"]
        assert requests.get(f"{api.url}/jobs/{first['job']}").json()["phase"] == "succeeded"

        # the queue is empty and stays empty: more rounds (GET /jobs runs one) start nothing
        wait_for(lambda: requests.get(f"{api.url}/jobs/{second['metadata']['name']}").json()
                 ["phase"] == "succeeded", 120, what="the follow-up to finish")
        for _ in range(3):
            assert requests.get(f"{api.url}/jobs").json()["queued"] == {}
        staging = [j for j in our_jobs(kube, namespace)
                   if j["metadata"]["labels"]["slipway.dev/environment"] == "staging"]
        assert len(staging) == 2
    finally:
        kube.kubectl("label", "node", node, f"{hold_key}-", check=False)


def test_auth_and_validation_over_http(kube, namespace, serve):
    kube.kubectl("apply", "-f", "-", input=cronjob_manifest(namespace))
    api = serve(namespace)
    assert requests.post(f"{api.url}/apply", json={"environment": "staging"}).status_code == 401
    wrong = requests.post(f"{api.url}/apply", headers={"Authorization": "Bearer nope"},
                          json={"environment": "staging"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    unknown = requests.post(f"{api.url}/apply", headers=AUTH, json={"environment": "qa"})
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_environment"
    bad = requests.post(f"{api.url}/apply", headers={**AUTH, "Content-Type": "application/json"},
                        data="{")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_json"
    assert our_jobs(kube, namespace) == []
    missing = requests.get(f"{api.url}/jobs/helmsman-cronjob-staging-0101000000-abcd")
    assert missing.status_code == 404 and missing.json()["error"] == "job_not_found"


def test_missing_cronjob_is_a_clear_404(kube, namespace, serve):
    api = serve(namespace, cronjob="no-such-cronjob")
    resp = requests.post(f"{api.url}/apply", headers=AUTH, json={"environment": "staging"})
    assert resp.status_code == 404
    assert resp.json()["error"] == "cronjob_not_found"
    assert "no-such-cronjob" in resp.json()["message"]


def test_readyz_checks_the_api_server(kube, namespace, serve):
    api = serve(namespace)
    assert requests.get(f"{api.url}/readyz").json() == {"status": "ok"}
    metrics = requests.get(f"{api.url}/metrics").text
    assert 'helm_api_http_requests_total{endpoint="/readyz",method="GET",status="200"}' in metrics


@pytest.mark.parametrize("who", ["token", "wrong", "none"])
def test_schemathesis_against_the_live_api(kube, namespace, serve, who):
    """Every operation, positive and negative cases, with the token, a wrong one and none:
    zero 5xx, zero answers outside the document."""
    schemathesis = pytest.importorskip("schemathesis")
    from tests.fixtures.fuzz import run_all

    kube.kubectl("apply", "-f", "-", input=cronjob_manifest(namespace))
    api = serve(namespace)
    headers = {"token": AUTH, "wrong": {"Authorization": "Bearer wrong"}, "none": {}}[who]
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    calls: list[int] = []
    failures = run_all(schema, headers, examples=8, calls=calls, base_url=api.url)
    assert not failures, "\n\n".join(failures)
    assert len(calls) >= 20, calls
    if who == "token":
        assert 202 in calls, calls
    else:
        assert 202 not in calls, calls


def test_apply_runs_the_real_helmsman_job_pod_on_the_real_node(kube, node, helm, chartmuseum, namespace, serve,
                                                               registry, base_image, tmp_path):
    """POST /apply -> a Job whose pod really runs the helmsman job image (scripts/helmsman-image:
    the local Python base, the toolchain's helm and kubectl, and the helmsman STAND-IN
    toolchain/helmsman_compat.py — the module proxy refuses helmsman) on the real node; the
    releases of the DSS file are installed in priority order and /jobs/<name> shows the pod's log.

    The pod uses the host network: the API server and ChartMuseum listen on 127.0.0.1 only
    (there is no kube-proxy, so the service IP does not route)."""
    import subprocess

    from tests.cluster.test_toolchain import make_chart, push_chart

    image = f"{registry.addr}/slipway-helmsman:test"
    root = Path(__file__).resolve().parents[2]
    built = subprocess.run([str(root / "scripts" / "helmsman-image"), image], capture_output=True, text=True,
                           check=False, timeout=600, cwd=root)
    assert built.returncode == 0, built.stderr
    pushed = subprocess.run(["docker", "push", "-q", image], capture_output=True, text=True, check=False, timeout=600)
    assert pushed.returncode == 0, pushed.stderr
    node.allow_registry(registry.addr)

    push_chart(helm, chartmuseum, make_chart(tmp_path / "src", "backend"), tmp_path)
    push_chart(helm, chartmuseum, make_chart(tmp_path / "src", "frontend"), tmp_path)
    dss = {"context": "slipway-test",
           "settings": {"kubeContext": "slipway", "bearerToken": True, "clusterURI": kube.server},
           "certificates": {"caCrt": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"},
           "namespaces": {namespace: {}},
           "helmRepos": {"slipway-test": chartmuseum.url},
           "apps": {"frontend": {"namespace": namespace, "enabled": True, "chart": "slipway-test/frontend",
                                 "version": "0.1.0", "priority": -1},
                    "backend": {"namespace": namespace, "enabled": True, "chart": "slipway-test/backend",
                                "version": "0.1.0", "priority": -10}}}
    binding = f"helmsman-{namespace}"
    kube.kubectl("create", "serviceaccount", "helmsman", "-n", namespace)
    kube.kubectl("create", "clusterrolebinding", binding, "--clusterrole=cluster-admin",
                 f"--serviceaccount={namespace}:helmsman")
    try:
        kube.kubectl("create", "configmap", "dss", "-n", namespace,
                     f"--from-literal=production.yaml={yaml.safe_dump(dss, sort_keys=False)}")
        pod_spec = {**node.placement(), "restartPolicy": "Never", "hostNetwork": True,
                    "serviceAccountName": "helmsman",
                    "containers": [{"name": "helmsman", "image": image,
                                    "env": [{"name": "DSS_FILE", "value": "default.yaml"}],
                                    "volumeMounts": [{"name": "dss", "mountPath": "/dss"}]}],
                    "volumes": [{"name": "dss", "configMap": {"name": "dss"}}]}
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "helmsman-cronjob",
                                                                      "namespace": namespace},
            "spec": {"suspend": True, "schedule": "0 4 * * *", "jobTemplate": {
                "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}}}}}))
        api = serve(namespace)
        resp = requests.post(f"{api.url}/apply", headers=AUTH, json={"environment": "production"})
        assert resp.status_code == 202, resp.text
        name = resp.json()["job"]

        def finished():
            detail = requests.get(f"{api.url}/jobs/{name}").json()
            return detail if detail["phase"] in ("succeeded", "failed") else None

        detail = wait_for(finished, 400, what="the helmsman job pod to finish")
        assert detail["phase"] == "succeeded", detail
        log = detail["log"]
        assert "backend" in log and log.find("backend") < log.find("frontend"), log   # the pod's real output
        pod = json.loads(kube.kubectl("get", "pod", detail["pod"], "-n", namespace, "-o", "json").stdout)
        assert pod["spec"]["nodeName"] == node.name
        [cs] = pod["status"]["containerStatuses"]
        assert cs["state"]["terminated"]["exitCode"] == 0 and cs["imageID"].startswith(f"{registry.addr}/")
        releases = {r["name"]: r for r in json.loads(helm.run("list", "-n", namespace, "-o", "json").stdout)}
        assert set(releases) == {"backend", "frontend"}
        assert all(r["status"] == "deployed" for r in releases.values())
    finally:
        kube.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)
        subprocess.run(["docker", "rmi", image], capture_output=True, check=False, timeout=60)  # only the tag
