"""The helmsman stand-in (toolchain/helmsman_compat.py) refuses what helmsman v4.0.5 refuses.

Each rule has a negative case here; the stand-in script runs as a process with python (no
toolchain needed: every case fails before helm would be called). The cluster lane runs the
committed DSS files through the same script against the real cluster
(tests/cluster/test_charts.py), where protection, history and no-op runs are checked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "toolchain" / "helmsman_compat.py"
REPO = "http://127.0.0.1:9/charts"


def _module():
    spec = importlib.util.spec_from_file_location("helmsman_compat", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hc = _module()


def committed(name: str) -> dict:
    return yaml.safe_load((ROOT / "helmsman" / name).read_text())


def run(tmp_path: Path, dsf: dict | Path, *args: str, kubeconfig: Path | None = None,
        env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    if isinstance(dsf, dict):
        path = tmp_path / "dsf.yaml"
        path.write_text(yaml.safe_dump(dsf, sort_keys=False))
    else:
        path = dsf
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    full_env = {"PATH": os.path.dirname(sys.executable), "HOME": str(tmp_path / "home"),
                "KUBECONFIG": str(kubeconfig or tmp_path / "no-kubeconfig"),
                "SLIPWAY_CHART_REPO": REPO, **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), "--no-banner", "--apply", "-f", str(path),
                           *args], cwd=work, capture_output=True, text=True, env=full_env,
                          timeout=60, preexec_fn=preexec)


def kubeconfig_with(tmp_path: Path, *contexts: str, current: str | None = None) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in contexts],
        **({"current-context": current} if current else {})}))
    return path


def minimal(**app_overrides) -> dict:
    app = {"namespace": "games", "enabled": True, "chart": "repo/game", "version": "~1"}
    app.update(app_overrides)
    return {"namespaces": {"games": {}}, "helmRepos": {"repo": REPO},
            "apps": {"game": {k: v for k, v in app.items() if v is not None}}}


@pytest.mark.parametrize("name", ["staging.yaml", "production.yaml"])
def test_committed_desired_state_files_are_valid(name, monkeypatch):
    monkeypatch.setenv("SLIPWAY_CHART_REPO", REPO)
    dsf, _ = hc.load_dsf([str(ROOT / "helmsman" / name)])
    assert hc.validate(dsf) == []


@pytest.mark.parametrize("constraint", [">=0.1.0-0, <1.0.0-0", "~0", "0.1.0", "^1.2 || >=3.0.0",
                                        "1.2 - 1.4.5", "*", ">= 1.0, < 2"])
def test_semver_v1_constraints_parse(constraint):
    hc.parse_constraint(constraint)


def test_space_separated_bounds_are_an_improper_constraint(tmp_path):
    proc = run(tmp_path, minimal(version=">=0.1.0-0 <1.0.0-0"))
    assert proc.returncode == 1
    assert "improper constraint: >=0.1.0-0 <1.0.0-0" in proc.stderr
    assert "validation failed" in proc.stderr


def test_version_is_required(tmp_path):
    proc = run(tmp_path, minimal(version=None))
    assert proc.returncode == 1 and "apps.game.version is required" in proc.stderr


def test_app_namespace_must_be_declared(tmp_path):
    dsf = minimal(namespace="elsewhere")
    proc = run(tmp_path, dsf)
    assert proc.returncode == 1
    assert "namespace [ elsewhere ] is not declared" in proc.stderr


def test_settings_timeout_is_not_a_setting(tmp_path):
    dsf = {**minimal(), "settings": {"timeout": 600}}
    proc = run(tmp_path, dsf)
    assert proc.returncode == 1
    assert "settings.timeout is not a helmsman setting" in proc.stderr
    assert "apps.<name>.timeout" in proc.stderr
    assert run(tmp_path, minimal(timeout="10m")).returncode == 1  # per app: seconds


def test_an_unset_environment_variable_is_an_error(tmp_path):
    env = {"PATH": os.path.dirname(sys.executable), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--apply", "-f",
                           str(ROOT / "helmsman" / "staging.yaml")], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "SLIPWAY_CHART_REPO" in proc.stderr


def test_an_unwritable_working_directory_is_refused(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_deleted_directory():  # like a read-only root: .helmsman-tmp cannot be created
        os.chdir(gone)
        os.rmdir(gone)

    proc = run(tmp_path, minimal(), kubeconfig=kubeconfig_with(tmp_path, "k", current="k"),
               preexec=enter_deleted_directory)
    assert proc.returncode == 1
    assert "stat .helmsman-tmp" in proc.stderr and "writable working directory" in proc.stderr


def test_no_kube_context_fails_settings_validation(tmp_path):
    proc = run(tmp_path, minimal())
    assert proc.returncode == 1
    assert "you have not defined a kubeContext to use" in proc.stderr
    # a kubeConfig without a current context is no better
    proc = run(tmp_path, minimal(), kubeconfig=kubeconfig_with(tmp_path, "other"))
    assert "you have not defined a kubeContext to use" in proc.stderr


def test_named_kube_context_must_exist_or_be_creatable(tmp_path):
    dsf = {**minimal(), "settings": {"kubeContext": "slipway"}}
    proc = run(tmp_path, dsf, kubeconfig=kubeconfig_with(tmp_path, "other", current="other"))
    assert proc.returncode == 1
    assert "kube context [ slipway ] does not exist" in proc.stderr


def test_committed_file_outside_a_pod_needs_the_service_account_files(tmp_path):
    """No kubeconfig context named `slipway` and no pod service account: the in-cluster
    settings cannot create the context, and the error names the missing file."""
    if Path(hc.SA_TOKEN).exists():
        pytest.skip("running inside a pod")
    proc = run(tmp_path, ROOT / "helmsman" / "staging.yaml")
    assert proc.returncode == 1
    assert "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt: no such file" in proc.stderr


def test_in_cluster_settings_create_the_context(tmp_path):
    """helmsman's documented in-cluster settings: kubeContext + bearerToken + clusterURI +
    certificates.caCrt (token at bearerTokenPath) make a context in the kubeconfig."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "token").write_text("sa-token-value")
    dsf = {**minimal(), "settings": {"kubeContext": "slipway", "bearerToken": True,
                                     "clusterURI": "https://kubernetes.default.svc",
                                     "bearerTokenPath": str(sa / "token")},
           "certificates": {"caCrt": str(sa / "ca.crt")}}
    kubeconfig = tmp_path / "home" / ".kube" / "config"
    proc = run(tmp_path, dsf, kubeconfig=kubeconfig)
    assert "Created kube context [ slipway ]" in proc.stdout
    assert "sa-token-value" not in proc.stdout + proc.stderr
    cfg = yaml.safe_load(kubeconfig.read_text())
    [ctx] = [c for c in cfg["contexts"] if c["name"] == "slipway"]
    [cluster] = [c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["context"]["cluster"]]
    assert cluster == {"server": "https://kubernetes.default.svc",
                       "certificate-authority": str(sa / "ca.crt")}
    # then it goes on to helm (absent here): the context was the only thing missing
    assert "helm not found" in proc.stderr


def test_staging_range_and_poller_staging_channel_agree():
    """What the staging DSS range deploys (of major 0) is exactly what the poller calls a
    staging build or a release; nothing the poller ignores."""
    from poller.charts.index import classify
    from poller.config import ChartRepoConfig

    pattern = ChartRepoConfig(name="r", url="http://x").staging_pattern
    for app in committed("staging.yaml")["apps"].values():
        for version in ["0.3.0-rc.1", "0.3.0-staging.1", "0.2.0-staging.20261122.3", "0.2.0",
                        "0.1.0-alpha", "0.9.9-beta.2"]:
            assert hc.constraint_allows(app["version"], version), version
            assert classify(version, pattern) in ("staging", "release"), version
        for version in ["1.0.0-staging.1", "1.0.0", "0.0.9"]:
            assert not hc.constraint_allows(app["version"], version), version
    for app in committed("production.yaml")["apps"].values():
        assert hc.constraint_allows(app["version"], "0.1.1")
        assert not hc.constraint_allows(app["version"], "0.2.0-staging.1")
        assert not hc.constraint_allows(app["version"], "1.0.0")


def test_production_is_not_protected_so_releases_can_flow():
    prod = committed("production.yaml")
    assert not any((spec or {}).get("protected") for spec in prod["namespaces"].values())
    assert not any(app.get("protected") for app in prod["apps"].values())


@pytest.mark.parametrize("name", ["staging.yaml", "production.yaml"])
def test_committed_files_use_helmsmans_in_cluster_settings(name):
    dsf = committed(name)
    assert dsf["settings"]["kubeContext"]
    assert dsf["settings"]["bearerToken"] is True
    assert dsf["settings"]["clusterURI"] == "https://kubernetes.default.svc"
    assert dsf["certificates"]["caCrt"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert "timeout" not in dsf["settings"]
    assert all(isinstance(app.get("timeout"), int) for app in dsf["apps"].values())
