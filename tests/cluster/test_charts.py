"""charts/slipway and charts/game-server: lint, template, install into the real cluster, and
prove the helm API's RBAC is enough and no more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SLIPWAY = str(ROOT / "charts" / "slipway")
GAME = str(ROOT / "charts" / "game-server")


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("chart", [SLIPWAY, GAME])
def test_helm_lint(helm, chart):
    out = helm.run("lint", "--strict", chart)
    assert "0 chart(s) failed" in out.stdout


def test_slipway_template(helm):
    rendered = docs(helm.run("template", "slipway", SLIPWAY, "--namespace", "ci").stdout)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("CronJob", "helmsman-cronjob") in kinds
    assert ("Deployment", "slipway-helm-api") in kinds and ("Service", "slipway-helm-api") in kinds
    assert ("Deployment", "slipway-poller") in kinds
    assert ("ConfigMap", "slipway-poller-config") in kinds
    cron = next(d for d in rendered if d["kind"] == "CronJob")
    assert cron["spec"]["suspend"] is True
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "helmsman"
    assert container["args"][:3] == ["--apply", "-f", "/dss/$(DSS_FILE)"]
    api = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "slipway-helm-api")
    c = api["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]
    assert "helm_api.wsgi:app" in c["args"] and "--workers=1" in c["args"]
    role = next(d for d in rendered if d["kind"] == "Role" and d["metadata"]["name"] == "slipway-helm-api")
    verbs = {(tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]}
    assert verbs == {(("cronjobs",), ("get",)), (("jobs",), ("create", "get", "list")),
                     (("pods",), ("get", "list")), (("pods/log",), ("get",))}
    config = yaml.safe_load(next(d for d in rendered if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert config["charts"]["helm_api"] == {"url": "http://slipway-helm-api:8080",
                                            "token": "${HELM_API_TOKEN}"}
    # the ConfigMap is a valid pipeline config once the token Secret is in the environment
    from poller.config import parse_config

    parsed = parse_config(config, file="configmap", env={"HELM_API_TOKEN": "from-secret"})
    assert parsed.charts.helm_api.token.get_secret_value() == "from-secret"
    assert parsed.api.listen == "0.0.0.0:8081"
    poller = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "slipway-poller")
    pc = poller["spec"]["template"]["spec"]["containers"][0]
    assert pc["args"] == ["run", "--config", "/etc/slipway/config.yaml"]
    assert pc["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pc["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "slipway-api-token", "key": "token"}


def test_game_server_template_both_kinds(helm):
    dep = docs(helm.run("template", "gs", GAME).stdout)
    deployment = next(d for d in dep if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["engine", "hot-update"]
    assert pod["volumes"][0]["emptyDir"]
    mounts = {c["name"]: c["volumeMounts"][0]["name"] for c in pod["containers"]}
    assert mounts == {"engine": "hot-update", "hot-update": "hot-update"}

    gss = docs(helm.run("template", "gs", GAME, "--set", "kind=GameServerSet").stdout)
    [set_] = [d for d in gss if d["kind"] == "GameServerSet"]
    assert set_["apiVersion"] == "game.kruise.io/v1alpha1"
    assert set_["spec"]["updateStrategy"]["rollingUpdate"]["podUpdatePolicy"] == "InPlaceIfPossible"
    assert [c["name"] for c in set_["spec"]["gameServerTemplate"]["spec"]["containers"]] == [
        "engine", "hot-update"]
    assert not [d for d in gss if d["kind"] in ("Deployment", "Service")]

    bad = helm.run("template", "gs", GAME, "--set", "kind=StatefulSet", check=False)
    assert bad.returncode != 0 and "kind must be Deployment or GameServerSet" in bad.stderr


def test_game_server_installs_as_deployment_and_gameserverset(helm, kube, namespace):
    helm.run("install", "gs", GAME, "--namespace", namespace, "--wait", "--timeout", "120s")
    kube.kubectl("rollout", "status", "deployment/gs-game-server", "-n", namespace, "--timeout=120s")
    helm.run("install", "gss", GAME, "--namespace", namespace, "--set", "kind=GameServerSet")
    out = json.loads(kube.kubectl("get", "gameserversets.game.kruise.io", "gss-game-server", "-n",
                                  namespace, "-o", "json").stdout)
    assert out["spec"]["updateStrategy"]["rollingUpdate"]["podUpdatePolicy"] == "InPlaceIfPossible"


def can_i(kube, namespace, sa, *args) -> bool:
    proc = kube.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{namespace}:{sa}",
                        "-n", namespace, check=False)
    return proc.stdout.strip() == "yes"


def test_slipway_installs_and_helm_api_rbac_is_least_privilege(helm, kube, namespace):
    helm.run("install", "slipway", SLIPWAY, "--namespace", namespace, "--wait", "--timeout", "180s")
    cron = json.loads(kube.kubectl("get", "cronjob", "helmsman-cronjob", "-n", namespace,
                                   "-o", "json").stdout)
    assert cron["spec"]["suspend"] is True
    secret = kube.kubectl("get", "secret", "slipway-api-token", "-n", namespace,
                          "-o", "jsonpath={.data.token}").stdout
    assert secret

    sa = "slipway-helm-api"
    allowed = [
        ("get", "cronjobs.batch/helmsman-cronjob"),
        ("create", "jobs.batch"), ("get", "jobs.batch"), ("list", "jobs.batch"),
        ("get", "pods"), ("list", "pods"), ("get", "pods", "--subresource=log"),
    ]
    refused = [
        ("get", "cronjobs.batch/another-cronjob"), ("list", "cronjobs.batch"),
        ("update", "cronjobs.batch/helmsman-cronjob"), ("delete", "jobs.batch"),
        ("patch", "jobs.batch"), ("watch", "jobs.batch"), ("create", "pods"),
        ("delete", "pods"), ("get", "secrets"), ("list", "secrets"), ("get", "configmaps"),
        ("create", "deployments.apps"), ("create", "rolebindings.rbac.authorization.k8s.io"),
    ]
    for args in allowed:
        assert can_i(kube, namespace, sa, *args), f"helm-api should be allowed: {args}"
    for args in refused:
        assert not can_i(kube, namespace, sa, *args), f"helm-api must be refused: {args}"
    # nothing outside its namespace
    proc = kube.kubectl("auth", "can-i", "create", "jobs.batch", "-n", "default",
                        f"--as=system:serviceaccount:{namespace}:{sa}", check=False)
    assert proc.stdout.strip() == "no"
    # the poller has no rights at all; helmsman manages its target namespace only
    assert not can_i(kube, namespace, "slipway-poller", "list", "pods")
    assert can_i(kube, namespace, "slipway-helmsman", "create", "deployments.apps")
    assert can_i(kube, namespace, "slipway-helmsman", "create", "secrets")
    proc = kube.kubectl("auth", "can-i", "create", "deployments.apps", "-n", "default",
                        f"--as=system:serviceaccount:{namespace}:slipway-helmsman", check=False)
    assert proc.stdout.strip() == "no"


def test_helm_api_with_the_charts_service_account_starts_a_run(helm, kube, namespace):
    """The RBAC is not only narrow but sufficient: the helm API authenticated as its
    ServiceAccount (a real token from the TokenRequest API) starts and reads a run."""
    import threading

    from kubernetes import client as k8s
    from werkzeug.serving import make_server

    from helm_api import create_app
    from helm_api.config import HelmApiConfig

    helm.run("install", "slipway", SLIPWAY, "--namespace", namespace,
             "--set", "helmsman.image.repository=busybox")
    token = kube.kubectl("create", "token", "slipway-helm-api", "-n", namespace).stdout.strip()
    admin = kube.api_client().configuration
    cfg = k8s.Configuration()
    cfg.host = admin.host
    cfg.ssl_ca_cert = admin.ssl_ca_cert
    cfg.verify_ssl = admin.verify_ssl
    cfg.api_key = {"authorization": f"Bearer {token}"}
    cfg.retries = False
    app = create_app(HelmApiConfig(token="t", namespace=namespace), kube=k8s.ApiClient(cfg))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert requests.get(f"{url}/readyz").status_code == 200
        resp = requests.post(f"{url}/apply", headers={"Authorization": "Bearer t"},
                             json={"environment": "staging"})
        assert resp.status_code == 202, resp.text
        detail = requests.get(f"{url}/jobs/{resp.json()['job']}")
        assert detail.status_code == 200, detail.text
        assert requests.get(f"{url}/jobs").json()["jobs"][0]["name"] == resp.json()["job"]
    finally:
        server.shutdown()
        app.extensions["helm_api"]["runner"].stop()


def _dss_for_test(name: str, repo_url: str, namespace: str, tmp_path: Path) -> Path:
    """helmsman/<name>.yaml with the repo pointed at the test ChartMuseum and every
    namespace mapped onto the test namespace; everything else (versions, priorities, set)
    as written."""
    dss = yaml.safe_load((ROOT / "helmsman" / name).read_text())
    dss["helmRepos"] = {"slipway": repo_url}
    dss["namespaces"] = {namespace: {}}
    dss.pop("context", None)
    for app in dss["apps"].values():
        app["namespace"] = namespace
        app.setdefault("set", {})["helmsman.clusterAccess.namespaces"] = "false"
    out = tmp_path / name
    out.write_text(yaml.safe_dump(dss))
    return out


def _releases(helm, namespace: str) -> dict[str, str]:
    listed = json.loads(helm.run("list", "-n", namespace, "-o", "json").stdout)
    return {r["name"]: r["chart"] for r in listed}


def test_chart_version_flows_from_push_through_helmsman_dss_to_the_cluster(
        helm, kube, namespace, chartmuseum, toolchain, tmp_path):
    """poller chart push -> ChartMuseum -> helmsman/staging.yaml and production.yaml -> releases."""
    from poller.charts.push import package_chart, push_chart

    def push(chart: str, version: str) -> None:
        push_chart(package_chart(ROOT / "charts" / chart, version=version), chartmuseum.url)

    def helmsman(dss: Path) -> str:
        proc = __import__("subprocess").run(
            [toolchain.bin("helmsman"), "--apply", "-f", str(dss)], capture_output=True,
            text=True, env=helm.env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    push("slipway", "0.1.0")
    push("game-server", "0.2.0-staging.1")
    push("game-server", "0.2.0-staging.2")
    push("game-server", "1.0.0-staging.1")  # next major: outside the staging range
    staging = _dss_for_test("staging.yaml", chartmuseum.url, namespace, tmp_path)
    out = helmsman(staging)
    # priority order: the pipeline (-20) before the game server (-10); the newest build
    # inside the DSS range is what lands, without editing the file
    assert out.index("slipway") < out.index("game-server")
    assert _releases(helm, namespace) == {"slipway": "slipway-0.1.0",
                                          "game-server": "game-server-0.2.0-staging.2"}
    deployment = json.loads(kube.kubectl("get", "deployment", "-n", namespace, "-l",
                                         "app.kubernetes.io/instance=game-server", "-o",
                                         "json").stdout)["items"][0]
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == [
        "engine", "hot-update"]
    # A newer build inside the range, pushed after the install, is picked up by the next run
    # of the same file: no commit needed for staging.
    push("game-server", "0.2.0-staging.3")
    helmsman(staging)
    assert _releases(helm, namespace)["game-server"] == "game-server-0.2.0-staging.3"

    # production takes stable releases of the pinned major only
    prod_ns = f"{namespace}-prod"
    kube.kubectl("create", "namespace", prod_ns)
    try:
        push("game-server", "0.2.0")
        push("game-server", "1.0.0")  # a new major: needs approval and a DSS edit
        production = _dss_for_test("production.yaml", chartmuseum.url, prod_ns, tmp_path)
        helmsman(production)
        assert _releases(helm, prod_ns) == {"slipway": "slipway-0.1.0",
                                            "game-server": "game-server-0.2.0"}
        gss = json.loads(kube.kubectl("get", "gameserversets.game.kruise.io", "-n", prod_ns,
                                      "-o", "json").stdout)["items"]
        assert [g["spec"]["updateStrategy"]["rollingUpdate"]["podUpdatePolicy"] for g in gss] == [
            "InPlaceIfPossible"]
    finally:
        kube.kubectl("delete", "namespace", prod_ns, "--wait=false", check=False)


def test_poller_gets_workload_rights_only_in_the_namespaces_it_manages(helm, kube, namespace):
    """poller.kubernetes.namespaces: the updater and plugin restarts may change workloads and
    pods there, and nothing else anywhere."""
    games = f"{namespace}-games"
    kube.kubectl("create", "namespace", games)
    try:
        helm.run("install", "slipway", SLIPWAY, "--namespace", namespace, "--wait", "--timeout", "180s",
                 "--set", f"poller.kubernetes.namespaces={{{games}}}")
        who = f"--as=system:serviceaccount:{namespace}:slipway-poller"

        def can(ns, *args):
            return kube.kubectl("auth", "can-i", *args, who, "-n", ns, check=False).stdout.strip() == "yes"

        for args in [("patch", "deployments.apps"), ("patch", "statefulsets.apps"),
                     ("patch", "daemonsets.apps"), ("patch", "gameserversets.game.kruise.io"),
                     ("delete", "pods"), ("patch", "pods"), ("create", "pods", "--subresource=exec"),
                     ("create", "configmaps"), ("patch", "configmaps")]:
            assert can(games, *args), f"poller should be allowed in {games}: {args}"
        for args in [("get", "secrets"), ("create", "deployments.apps"), ("delete", "deployments.apps"),
                     ("create", "rolebindings.rbac.authorization.k8s.io"), ("delete", "configmaps")]:
            assert not can(games, *args), f"poller must be refused in {games}: {args}"
        for args in [("patch", "deployments.apps"), ("delete", "pods")]:
            assert not can(namespace, *args) and not can("default", *args)
        pod_spec = json.loads(kube.kubectl("get", "deployment", "slipway-poller", "-n", namespace,
                                           "-o", "json").stdout)["spec"]["template"]["spec"]
        assert pod_spec["automountServiceAccountToken"] is True
    finally:
        kube.kubectl("delete", "namespace", games, "--wait=false", check=False)
