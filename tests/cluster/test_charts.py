"""charts/slipway and charts/game-server: lint, template, install into the real cluster, and
prove the helm API's RBAC is enough and no more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.fixtures.services import wait_until

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SLIPWAY = str(ROOT / "charts" / "slipway")
GAME = str(ROOT / "charts" / "game-server")
# the chart never generates the API token (see templates/secret.yaml)
TOKEN_ARGS = ("--set", "apiToken.value=test-api-token")


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("chart, args", [(SLIPWAY, TOKEN_ARGS), (GAME, ())])
def test_helm_lint(helm, chart, args):
    out = helm.run("lint", "--strict", chart, *args)
    assert "0 chart(s) failed" in out.stdout


def test_slipway_template(helm):
    rendered = docs(helm.run("template", "slipway", SLIPWAY, "--namespace", "ci",
                             *TOKEN_ARGS).stdout)
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
    # the default stays one SQLite replica, no workers
    assert poller["spec"]["replicas"] == 1 and poller["spec"]["strategy"]["type"] == "Recreate"
    assert not any(d["metadata"]["name"] == "slipway-worker" for d in rendered)


def test_slipway_template_with_postgres_replicas_and_workers(helm):
    pg = ("--set", "store.postgres.existingSecret=slipway-pg", "--set", "poller.replicas=3",
          "--set", "worker.replicas=2", "--set", "worker.dockerHost=tcp://docker-engine:2376")
    rendered = docs(helm.run("template", "slipway", SLIPWAY, *TOKEN_ARGS, *pg).stdout)
    assert "0 chart(s) failed" in helm.run("lint", "--strict", SLIPWAY, *TOKEN_ARGS, *pg).stdout
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    poller = by_name[("Deployment", "slipway-poller")]
    worker = by_name[("Deployment", "slipway-worker")]
    assert poller["spec"]["replicas"] == 3 and poller["spec"]["strategy"]["type"] == "RollingUpdate"
    assert worker["spec"]["replicas"] == 2
    wc = worker["spec"]["template"]["spec"]["containers"][0]
    assert wc["args"][:3] == ["worker", "--config", "/etc/slipway/config.yaml"]
    env = {e["name"]: e for e in wc["env"]}
    assert env["DOCKER_HOST"]["value"] == "tcp://docker-engine:2376"
    for c in (wc, poller["spec"]["template"]["spec"]["containers"][0]):
        url = next(e for e in c["env"] if e["name"] == "SLIPWAY_STORE_URL")
        assert url["valueFrom"]["secretKeyRef"] == {"name": "slipway-pg", "key": "url"}
    config = yaml.safe_load(by_name[("ConfigMap", "slipway-poller-config")]["data"]["config.yaml"])
    from poller.config import parse_config

    parsed = parse_config(config, file="configmap", env={
        "HELM_API_TOKEN": "t", "SLIPWAY_STORE_URL": "postgresql://slipway:pw@pg:5432/slipway"})
    assert parsed.store_target == "postgresql://slipway:pw@pg:5432/slipway"


@pytest.mark.parametrize("values, words", [
    (("--set", "poller.replicas=2"), "poller.replicas > 1 needs store.postgres"),
    (("--set", "worker.replicas=1"), "worker.replicas > 0 needs store.postgres"),
    (("--set", "store.postgres.existingSecret=pg", "--set", "worker.replicas=1"),
     "worker.dockerHost is required"),
])
def test_slipway_chart_refuses_replicas_a_sqlite_store_cannot_serve(helm, values, words):
    bad = helm.run("template", "slipway", SLIPWAY, *TOKEN_ARGS, *values, check=False)
    assert bad.returncode != 0 and words in bad.stderr


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
    helm.run("install", "slipway", SLIPWAY, "--namespace", namespace, "--wait", "--timeout", "180s",
             *TOKEN_ARGS)
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

    helm.run("install", "slipway", SLIPWAY, "--namespace", namespace, *TOKEN_ARGS,
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


# -- helmsman: the committed desired-state files through the stand-in, on the real cluster ------
# The stand-in helmsman runs on the host here (KWOK runs no real pods): the DSS files are used
# exactly as committed; the host's kubeconfig gets a context named like `settings.kubeContext`
# (helmsman uses an existing context of that name before creating one from the in-cluster
# settings) and SLIPWAY_CHART_REPO points `helmRepos` at the test ChartMuseum, as the CronJob
# does in the cluster.
DSS = ROOT / "helmsman"
FIXED_NAMESPACES = ("slipway-staging", "game-staging", "slipway-system", "game-production")


class Helmsman:
    def __init__(self, toolchain, helm, kube, chartmuseum, tmp_path: Path):
        self.bin = toolchain.bin("helmsman")
        self.helm, self.kube, self.chartmuseum = helm, kube, chartmuseum
        context = yaml.safe_load((DSS / "staging.yaml").read_text())["settings"]["kubeContext"]
        cfg = yaml.safe_load(Path(kube.kubeconfig).read_text())
        current = next(c for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        extra = tmp_path / "kubeconfig-helmsman-context"
        extra.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "contexts": [
            {"name": context, "context": dict(current["context"])}]}))
        self.workdir = tmp_path / "helmsman-work"
        self.workdir.mkdir()
        self.env = {**helm.env, "KUBECONFIG": f"{kube.kubeconfig}{os.pathsep}{extra}",
                    "SLIPWAY_CHART_REPO": chartmuseum.url}

    def run(self, dss: Path, *, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.bin, "--no-banner", "--apply", "-f", str(dss)],
                              capture_output=True, text=True, env=self.env, cwd=self.workdir,
                              timeout=600)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def push(self, chart: str, version: str) -> None:
        from poller.charts.push import package_chart, push_chart

        push_chart(package_chart(ROOT / "charts" / chart, version=version), self.chartmuseum.url)

    def release(self, name: str, namespace: str) -> tuple[str, int]:
        """(chart-version, revision) of a deployed release."""
        [rel] = [r for r in json.loads(self.helm.run("list", "-n", namespace, "-o", "json").stdout)
                 if r["name"] == name]
        assert rel["status"] == "deployed", rel
        return rel["chart"], int(rel["revision"])


def _clean_fixed_namespaces(kube) -> None:
    kube.kubectl("delete", "namespace", *FIXED_NAMESPACES, "--ignore-not-found", "--wait=false")
    wait_until(lambda: not [ns for ns in FIXED_NAMESPACES if kube.kubectl(
        "get", "namespace", ns, check=False).returncode == 0], 180,
        what="the DSS namespaces to be gone")


@pytest.fixture
def helmsman(toolchain, helm, kube, chartmuseum, tmp_path):
    """The committed DSS namespaces, fresh, with the operator-made API token Secret."""
    _clean_fixed_namespaces(kube)
    for ns in FIXED_NAMESPACES:
        kube.kubectl("create", "namespace", ns)
    for ns in ("slipway-staging", "slipway-system"):
        kube.kubectl("create", "secret", "generic", "slipway-api-token", "-n", ns,
                     "--from-literal=token=operator-made-token")
    yield Helmsman(toolchain, helm, kube, chartmuseum, tmp_path)
    _clean_fixed_namespaces(kube)


def test_staging_dss_as_committed_deploys_the_newest_build_and_a_no_op_run_is_a_no_op(helmsman):
    """helmsman/staging.yaml, unmodified: the range (semver v1 grammar, with the comma)
    resolves the newest build of major 0; a second run changes nothing (helm revisions kept,
    the chart renders the same without `lookup`); a new build is picked up."""
    h = helmsman
    h.push("slipway", "0.1.0")
    h.push("game-server", "0.2.0-staging.1")
    h.push("game-server", "0.2.0-staging.2")
    h.push("game-server", "1.0.0-staging.1")  # next major: outside the staging range
    out = h.run(DSS / "staging.yaml").stdout
    # priority order: the pipeline (-20) before the game server (-10)
    executed = out[out.index("Executing"):]
    assert executed.index("release [ slipway ]") < executed.index("release [ game-server ]"), out
    assert h.release("slipway", "slipway-staging") == ("slipway-0.1.0", 1)
    assert h.release("game-server", "game-staging") == ("game-server-0.2.0-staging.2", 1)
    deployment = json.loads(h.kube.kubectl("get", "deployment", "-n", "game-staging", "-l",
                                           "app.kubernetes.io/instance=game-server", "-o",
                                           "json").stdout)["items"][0]
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == [
        "engine", "hot-update"]
    # the helm API token comes from the operator's Secret: the chart made none of its own
    assert h.kube.kubectl("get", "secret", "slipway-api-token", "-n", "slipway-staging", "-o",
                          "jsonpath={.metadata.labels}").stdout in ("", "{}")

    again = h.run(DSS / "staging.yaml").stdout
    assert "Executing" not in again, again
    assert h.release("slipway", "slipway-staging") == ("slipway-0.1.0", 1)
    assert h.release("game-server", "game-staging") == ("game-server-0.2.0-staging.2", 1)

    h.push("game-server", "0.2.0-staging.3")
    h.run(DSS / "staging.yaml")
    assert h.release("game-server", "game-staging") == ("game-server-0.2.0-staging.3", 2)
    assert h.release("slipway", "slipway-staging") == ("slipway-0.1.0", 1)


def test_production_release_flows_twice_in_a_row_through_the_committed_dss(helmsman, tmp_path):
    """push -> ChartWatcher decides `production` -> (the Job's) helmsman production.yaml, as
    committed -> the cluster: 0.1.0, then 0.1.1. Prereleases and a new major stay out."""
    from poller.charts.watcher import ChartWatcher
    from poller.config import ChartRepoConfig, ChartsConfig, HelmApiClientConfig
    from poller.store import Store
    from tests.integration.chart_servers import RecordingHelmApi

    h = helmsman
    api = RecordingHelmApi()
    try:
        repo = ChartRepoConfig(name="slipway", url=h.chartmuseum.url)
        watcher = ChartWatcher(repo, ChartsConfig(repos=[repo], helm_api=HelmApiClientConfig(
            url=api.url, token="t")), Store(tmp_path / "slipway.db"))
        dss_for = {"production": DSS / "production.yaml", "staging": DSS / "staging.yaml"}

        def release_cycle() -> list[str]:
            """One poll; every environment the poller applies gets its helmsman run."""
            before = len(api.calls)
            watcher.reconcile()
            envs = [c["body"]["environment"] for c in api.calls[before:]]
            for env in envs:
                if env == "production":
                    h.run(dss_for[env])
            return envs

        for version in ("0.1.0", "0.2.0-staging.1"):
            h.push("slipway", version)
            h.push("game-server", version)
        assert "production" in release_cycle()
        assert h.release("slipway", "slipway-system") == ("slipway-0.1.0", 1)
        assert h.release("game-server", "game-production") == ("game-server-0.1.0", 1)
        gss = json.loads(h.kube.kubectl("get", "gameserversets.game.kruise.io", "-n",
                                        "game-production", "-o", "json").stdout)["items"]
        assert [g["spec"]["updateStrategy"]["rollingUpdate"]["podUpdatePolicy"] for g in gss] == [
            "InPlaceIfPossible"]

        h.push("game-server", "0.1.1")
        h.push("game-server", "1.0.0")  # a new major: approval + a DSS edit, never this run
        assert release_cycle() == ["production"]
        assert h.release("game-server", "game-production") == ("game-server-0.1.1", 2)
        assert h.release("slipway", "slipway-system") == ("slipway-0.1.0", 1)
        assert [a["version"] for a in watcher.history() if a["channel"] == "release"
                and a["chart"] == "game-server"] == ["0.1.0", "0.1.1"]
    finally:
        api.stop()


def test_a_protected_namespace_freezes_its_releases(helmsman, tmp_path):
    """helmsman's protection: an existing release in a protected namespace is neither upgraded
    nor deleted (why production.yaml does not use it); installing into protection works."""
    h = helmsman
    h.push("slipway", "0.1.0")
    h.push("game-server", "0.1.0")
    frozen = yaml.safe_load((DSS / "production.yaml").read_text())
    frozen["namespaces"]["game-production"] = {"protected": True}
    path = tmp_path / "production-frozen.yaml"
    path.write_text(yaml.safe_dump(frozen))
    h.run(path)
    assert h.release("game-server", "game-production") == ("game-server-0.1.0", 1)
    h.push("game-server", "0.1.1")
    out = h.run(path).stdout
    assert "Release [ game-server ] in namespace [ game-production ] is PROTECTED" in out
    assert h.release("game-server", "game-production") == ("game-server-0.1.0", 1)
    frozen["apps"]["game-server"]["enabled"] = False
    path.write_text(yaml.safe_dump(frozen))
    h.run(path)
    assert h.release("game-server", "game-production") == ("game-server-0.1.0", 1)
    # lifting the freeze lets the release flow again
    h.run(DSS / "production.yaml")
    assert h.release("game-server", "game-production") == ("game-server-0.1.1", 2)


class TinyRelease:
    """A one-template chart in ChartMuseum and a DSS for it; `run` returns the helm revision."""

    def __init__(self, helmsman, namespace: str, tmp_path: Path, max_history: int | None = None):
        self.h, self.namespace, self.tmp = helmsman, namespace, tmp_path
        self.dsf = {"context": "tiny", "namespaces": {namespace: {}},
                    "helmRepos": {"t": helmsman.chartmuseum.url},
                    "apps": {"tiny": {"namespace": namespace, "enabled": True, "chart": "t/tiny",
                                      "version": "0.1.0", "set": {"greeting": "hi"}}}}
        if max_history:
            self.dsf["settings"] = {"globalMaxHistory": max_history}
        self.path = tmp_path / "tiny.yaml"

    def push(self, template: str, version: str) -> None:
        from poller.charts.push import package_chart, push_chart

        chart = self.tmp / f"tiny-{version}"
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text(f"apiVersion: v2\nname: tiny\nversion: {version}\n")
        (chart / "values.yaml").write_text("greeting: hi\n")
        (chart / "templates" / "t.yaml").write_text(template)
        push_chart(package_chart(chart), self.h.chartmuseum.url)

    def run(self, **change) -> int:
        self.dsf["apps"]["tiny"].update(change)
        self.path.write_text(yaml.safe_dump(self.dsf))
        self.h.run(self.path)
        return self.h.release("tiny", self.namespace)[1]


CONFIGMAP = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tiny}\n"
             "data: {greeting: {{ .Values.greeting | quote }}}\n")


def test_helmsman_upgrades_only_on_a_new_version_or_a_changed_render(helmsman, namespace,
                                                                      tmp_path):
    """The same render is no upgrade, a changed value is, and a template that renders
    randomly without `lookup` (what the old token Secret did) upgrades on every run."""
    tiny = TinyRelease(helmsman, namespace, tmp_path)
    tiny.push(CONFIGMAP, "0.1.0")
    assert tiny.run() == 1
    assert tiny.run() == 1                       # same render: no upgrade
    assert tiny.run(set={"greeting": "ho"}) == 2  # same version, changed manifest
    tiny.push(CONFIGMAP, "0.1.1")
    assert tiny.run(version="0.1.1") == 3        # same render, new version
    tiny.push("apiVersion: v1\nkind: Secret\nmetadata: {name: tiny-token}\n"
              "data: {token: {{ randAlphaNum 12 | b64enc | quote }}}\n", "0.2.0")
    assert tiny.run(version="0.2.0") == 4
    assert tiny.run() == 5  # renders differently every time: never a no-op


def test_helmsman_passes_global_max_history(helmsman, namespace, tmp_path):
    tiny = TinyRelease(helmsman, namespace, tmp_path, max_history=2)
    tiny.push(CONFIGMAP, "0.1.0")
    for n, greeting in enumerate(("a", "b", "c"), start=1):
        assert tiny.run(set={"greeting": greeting}) == n
    history = json.loads(helmsman.helm.run("history", "tiny", "-n", namespace, "-o",
                                           "json").stdout)
    assert [r["revision"] for r in history] == [2, 3]  # --history-max 2


def test_helmsman_cronjob_runs_with_a_writable_working_directory(helm):
    rendered = docs(helm.run("template", "slipway", SLIPWAY, "--namespace", "ci",
                             *TOKEN_ARGS).stdout)
    cron = next(d for d in rendered if d["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert c["workingDir"] == "/work" and "emptyDir" in volumes[mounts["/work"]]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/tmp" and "emptyDir" in volumes[mounts["/tmp"]]
    assert env["SLIPWAY_CHART_REPO"] == "http://chartmuseum:8080"


def test_api_token_comes_from_values_and_renders_the_same_every_time(helm):
    bare = helm.run("template", "slipway", SLIPWAY, check=False)
    assert bare.returncode != 0
    assert "apiToken.existingSecret" in bare.stderr and "apiToken.value" in bare.stderr
    first = helm.run("template", "slipway", SLIPWAY, *TOKEN_ARGS).stdout
    assert helm.run("template", "slipway", SLIPWAY, *TOKEN_ARGS).stdout == first
    existing = docs(helm.run("template", "slipway", SLIPWAY, "--set",
                             "apiToken.existingSecret=mine").stdout)
    assert not [d for d in existing if d["kind"] == "Secret"]
    poller = next(d for d in existing if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "slipway-poller")
    ref = poller["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]
    assert ref["secretKeyRef"] == {"name": "mine", "key": "token"}

def test_poller_gets_workload_rights_only_in_the_namespaces_it_manages(helm, kube, namespace):
    """poller.kubernetes.namespaces: the updater and plugin restarts may change workloads and
    pods there, and nothing else anywhere."""
    games = f"{namespace}-games"
    kube.kubectl("create", "namespace", games)
    try:
        helm.run("install", "slipway", SLIPWAY, "--namespace", namespace, "--wait", "--timeout", "180s",
                 *TOKEN_ARGS, "--set", f"poller.kubernetes.namespaces={{{games}}}")
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


def test_committed_in_cluster_settings_connect_as_the_job_service_account(
        helmsman, helm, kube, namespace, tmp_path):
    """What the Job pod does, on the host: no kubeconfig, HOME and the working directory on
    scratch space, the pod's service-account token and CA at the paths the DSS names. The
    committed staging.yaml's settings create the context; the helmsman ServiceAccount of
    charts/slipway (targetNamespaces: game-staging) is enough to deploy the game server."""
    import base64

    h = helmsman
    helm.run("install", "slipway", SLIPWAY, "--namespace", namespace, *TOKEN_ARGS,
             "--set", "helmsman.targetNamespaces={game-staging}")
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(kube.kubectl("create", "token", "slipway-helmsman", "-n",
                                           namespace).stdout.strip())
    cfg = yaml.safe_load(Path(kube.kubeconfig).read_text())
    cluster = cfg["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        (sa / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        (sa / "ca.crt").write_bytes(Path(cluster["certificate-authority"]).read_bytes())
    # only the pod-specific paths and the API address differ from the committed file
    dss = yaml.safe_load((DSS / "staging.yaml").read_text())
    dss["certificates"]["caCrt"] = str(sa / "ca.crt")
    dss["settings"]["bearerTokenPath"] = str(sa / "token")
    dss["settings"]["clusterURI"] = kube.server
    path = tmp_path / "staging-in-pod.yaml"
    path.write_text(yaml.safe_dump(dss))
    h.push("game-server", "0.2.0-staging.1")
    home, work = tmp_path / "pod-home", tmp_path / "pod-work"
    home.mkdir()
    work.mkdir()
    env = {"PATH": os.pathsep.join([str(Path(h.bin).parent), os.path.dirname(sys.executable),
                                    "/usr/bin", "/bin"]),
           "HOME": str(home), "SLIPWAY_CHART_REPO": h.chartmuseum.url}
    proc = subprocess.run([h.bin, "--no-banner", "--apply", "--target", "game-server", "-f",
                           str(path)], capture_output=True, text=True, env=env, cwd=work,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Created kube context [ slipway ]" in proc.stdout
    assert h.release("game-server", "game-staging") == ("game-server-0.2.0-staging.1", 1)
    assert not (work / ".helmsman-tmp").exists()  # scratch space cleaned up
