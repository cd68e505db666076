"""A Kubernetes API failure lands in the error tree by its status (poller/kube.py), asserted
against the real API server: RBAC's 403 is permanent, never retried as an upstream outage."""

from __future__ import annotations

import pytest
import yaml

from poller.errors import AuthError, NotFound, UpstreamError
from poller.rollout.control import RolloutControl
from poller.rollout.pods import PodRollout
from poller.settings.updates import RolloutConfig
from poller.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def kubeconfig_for_serviceaccount(kube, namespace: str, tmp_path, name: str) -> str:
    """A kubeconfig that authenticates as a ServiceAccount with no RBAC grants at all."""
    kube.kubectl("create", "serviceaccount", name, "-n", namespace)
    token = kube.kubectl("create", "token", name, "-n", namespace).stdout.strip()
    admin = yaml.safe_load(open(kube.kubeconfig).read())
    cluster = admin["clusters"][0]
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
           "users": [{"name": name, "user": {"token": token}}],
           "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
           "current-context": name}
    path = tmp_path / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def rollout(api, namespace, tmp_path) -> PodRollout:
    return PodRollout(api, RolloutConfig(steps=["100%"]), namespace=namespace, container="game",
                      selector={"app": "game"}, control=RolloutControl(Store(tmp_path / "s.db")))


def test_forbidden_by_rbac_is_a_permanent_auth_error_not_an_outage(kube, namespace, tmp_path):
    from kubernetes import config

    api = config.new_client_from_config(
        config_file=kubeconfig_for_serviceaccount(kube, namespace, tmp_path, "nobody"))
    with pytest.raises(AuthError) as err:
        rollout(api, namespace, tmp_path).run("game", "1.1.0", "r:5000/game:1.1.0")
    assert not isinstance(err.value, UpstreamError)
    assert "403" in str(err.value) and "list pods app=game" in str(err.value)


def test_a_missing_pod_is_not_found(kube, namespace, tmp_path):
    ro = rollout(kube.api_client(), namespace, tmp_path)
    pod = {"metadata": {"name": "gone"}, "spec": {"containers": [{"name": "game", "image": "x"}]}}
    with pytest.raises(NotFound) as err:
        ro._patch(pod, "r:5000/game:1.1.0")
    assert "patch pod gone" in str(err.value)
