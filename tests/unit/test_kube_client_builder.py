"""poller.kube.api_client: the one Kubernetes client builder (no server needed: what is
checked is which cluster and identity the client was built for, and how a bad configuration
fails)."""

from __future__ import annotations

import pytest
import yaml

from poller import kube
from poller.errors import UpstreamError


def two_contexts(tmp_path) -> str:
    cfg = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "a", "cluster": {"server": "https://a.example:6443"}},
                        {"name": "b", "cluster": {"server": "https://b.example:6443"}}],
           "users": [{"name": "u", "user": {"token": "t0ken"}}],
           "contexts": [{"name": "ctx-a", "context": {"cluster": "a", "user": "u"}},
                        {"name": "ctx-b", "context": {"cluster": "b", "user": "u"}}],
           "current-context": "ctx-a"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_kubeconfig_and_context_pick_the_cluster_and_retries_are_off(tmp_path):
    path = two_contexts(tmp_path)
    assert kube.api_client(path).configuration.host == "https://a.example:6443"
    api = kube.api_client(path, context="ctx-b")
    assert api.configuration.host == "https://b.example:6443"
    assert api.configuration.retries is False


def test_a_missing_kubeconfig_is_an_upstream_error_naming_the_file(tmp_path):
    missing = str(tmp_path / "nope.kubeconfig")
    with pytest.raises(UpstreamError) as err:
        kube.api_client(missing)
    assert missing in str(err.value)


def test_an_unknown_context_is_an_upstream_error_not_a_raw_config_exception(tmp_path):
    with pytest.raises(UpstreamError) as err:
        kube.api_client(two_contexts(tmp_path), context="ctx-zz")
    assert "ctx-zz" in str(err.value)


def test_in_cluster_without_a_service_account_is_an_upstream_error():
    with pytest.raises(UpstreamError) as err:
        kube.api_client(in_cluster=True)
    assert "in-cluster service account" in str(err.value)


def test_the_updaters_kubernetes_targets_use_the_one_builder(tmp_path):
    from poller.settings.updates import UpdatesConfig
    from poller.updater.target_factory import TargetFactory

    path = two_contexts(tmp_path)
    targets = TargetFactory(UpdatesConfig(kubeconfig=path), informers=False)
    api = targets.kube_api(None, "ctx-b")
    assert api.configuration.host == "https://b.example:6443"
    assert api.configuration.retries is False   # one retry policy: the caller's, from the mapped error
    assert targets.kube_api(None, "ctx-b") is api   # one client per cluster


def test_a_deployments_missing_kubeconfig_is_an_upstream_error_naming_the_file(tmp_path):
    from poller.settings.updates import UpdatesConfig
    from poller.updater.target_factory import TargetFactory

    missing = str(tmp_path / "nope.kubeconfig")
    with pytest.raises(UpstreamError) as err:
        TargetFactory(UpdatesConfig(), informers=False).kube_api(missing)
    assert missing in str(err.value)


def test_a_deployment_without_kubeconfig_is_in_cluster_never_the_users_kubeconfig(tmp_path, monkeypatch):
    """Outside a pod, a deployment that names no kubeconfig fails clearly; it never falls back to
    whatever cluster ``$KUBECONFIG`` or ``~/.kube/config`` points at."""
    from poller.settings.updates import UpdatesConfig
    from poller.updater.target_factory import TargetFactory

    monkeypatch.setenv("KUBECONFIG", two_contexts(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UpstreamError) as err:
        TargetFactory(UpdatesConfig(), informers=False).kube_api(None)
    assert "in-cluster service account" in str(err.value)
