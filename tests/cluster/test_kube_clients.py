"""The one Kubernetes client builder (poller.kube.api_client) and the one error mapping, used
by the plugin rollout and the helm API, against the real API server: an identity without RBAC
grants is a permanent ``AuthError`` (helm API: 403 ``cluster_refused``, the status the poller's
API gives a refused credential too), never a raw ``ApiException`` or an outage."""

from __future__ import annotations

import pytest
import requests

from helm_api import MAX_BODY, create_app
from helm_api.config import HelmApiConfig
from helm_api.kube import api_client_from
from poller import kube as pkube
from poller.artifacts.kube import KubePluginRollout, apps_api
from poller.artifacts.store import ArtifactStore
from poller.config import parse_config
from poller.errors import AuthError, UpstreamError
from poller.httpapi import serve as serve_wsgi
from poller.httpapi import status_for
from poller.registry.client import RegistryClient
from tests.cluster.test_kube_errors import kubeconfig_for_serviceaccount
from tests.integration.test_error_status import publish_with_wrong_password, start_auth_registry

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

TOKEN = "kube-clients-token"


def test_plugin_rollout_refused_by_rbac_is_an_auth_error_not_a_raw_api_exception(
        kube, namespace, registry, tmp_path):
    cfg = parse_config({"registry": {"url": registry.addr, "insecure": True},
                        "plugins": {"server_types": {"lobby": {"plugins": {"chat": "latest"}}},
                                    "environments": {"k8s": {"kubernetes_namespace": namespace}}}},
                       env={})
    nobody = kubeconfig_for_serviceaccount(kube, namespace, tmp_path, "plugins-nobody")
    rollout = KubePluginRollout(cfg.plugins, ArtifactStore(RegistryClient(cfg.registry), "plugins"),
                                apps_api(nobody))
    with pytest.raises(AuthError) as err:
        rollout.cycle("k8s")
    assert not isinstance(err.value, UpstreamError)
    assert "403" in str(err.value) and namespace in str(err.value)


def test_the_builder_reaches_the_api_server_with_the_kubeconfigs_identity(kube, namespace, tmp_path):
    api = pkube.api_client(kube.kubeconfig)
    from kubernetes import client

    names = [n["metadata"]["name"] for n in pkube.call(
        "list namespaces", client.CoreV1Api(api).list_namespace)["items"]]
    assert namespace in names
    assert api.configuration.retries is False


def test_refused_credentials_are_the_same_403_on_the_helm_api_as_on_the_poller_api(
        kube, namespace, tmp_path):
    nobody = kubeconfig_for_serviceaccount(kube, namespace, tmp_path, "helm-nobody")
    cfg = HelmApiConfig(token=TOKEN, namespace=namespace)
    app = create_app(cfg, kube=api_client_from(kubeconfig=nobody))
    server = serve_wsgi(app, "127.0.0.1:0", max_body=MAX_BODY, name="helm-api")
    try:
        url = f"http://127.0.0.1:{server.port}"
        resp = requests.post(f"{url}/apply", json={"environment": "staging"},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        jobs = requests.get(f"{url}/jobs", timeout=30)
    finally:
        server.close()
        app.extensions["helm_api"]["runner"].stop()
    registry = start_auth_registry(tmp_path / "auth-registry", user="slipway", password="pw")
    try:
        published = publish_with_wrong_password(tmp_path, registry)
    finally:
        registry.stop()
    assert resp.status_code == jobs.status_code == published.status_code == 403, \
        (resp.text, jobs.text, published.json)
    assert status_for(AuthError("x"))[0] == 403
    assert resp.json()["error"] == jobs.json()["error"] == "cluster_refused"
    assert "403" in resp.json()["message"]
    assert published.json["error"] == "upstream_refused"
