"""helm API paths that never reach a cluster: auth, body validation, health, docs.

The app gets a real ``kubernetes`` ApiClient aimed at a closed local port, so any call that
did reach for the cluster would fail with 503, never be faked.
"""

from __future__ import annotations

import socket

import pytest
from kubernetes import client as k8s

from helm_api import create_app
from helm_api.config import HelmApiConfig
from helm_api.kube import Kube

TOKEN = "t0ken-for-tests"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_kube() -> Kube:
    cfg = k8s.Configuration()
    cfg.host = f"http://127.0.0.1:{_closed_port()}"
    cfg.retries = False
    return Kube(k8s.ApiClient(cfg))


@pytest.fixture
def app():
    app = create_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    yield app
    app.extensions["helm_api"]["runner"].stop()


@pytest.fixture
def client(app):
    return app.test_client()


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_apply_without_token_is_401_with_challenge(client):
    resp = client.post("/apply", json={"environment": "staging"})
    assert resp.status_code == 401
    assert resp.json["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token abc"])
def test_apply_with_malformed_authorization_is_401(client, header):
    assert client.post("/apply", headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], "ünïcode"])
def test_apply_with_wrong_token_is_403(client, token):
    resp = client.post("/apply", headers={"Authorization": "Bearer " + token},
                       json={"environment": "staging"})
    assert resp.status_code == 403
    assert resp.json == {"error": "forbidden", "message": "the bearer token is not valid"}


def test_no_configured_token_refuses_every_token():
    app = create_app(HelmApiConfig(token=None), kube=unreachable_kube())
    assert app.test_client().post("/apply", headers=auth("anything")).status_code == 403


def test_bad_json_is_400(client):
    resp = client.post("/apply", headers={**auth(), "Content-Type": "application/json"},
                       data="{not json")
    assert resp.status_code == 400
    assert resp.json["error"] == "bad_json"
    assert "Traceback" not in resp.get_data(as_text=True)


@pytest.mark.parametrize("body, fragment", [
    ('["staging"]', "JSON object"),
    ('{"environment": 3}', "'environment' must be a string"),
    ('{"reason": 7}', "'reason'"),
    ('{"environment": "staging", "force": true}', "unknown field(s): force"),
])
def test_invalid_bodies_are_400(client, body, fragment):
    resp = client.post("/apply", headers=auth(), data=body, content_type="application/json")
    assert resp.status_code == 400
    assert fragment in resp.json["message"]


def test_unknown_environment_is_400_and_names_the_known_ones(client):
    resp = client.post("/apply", headers=auth(), json={"environment": "qa"})
    assert resp.status_code == 400
    assert resp.json["error"] == "unknown_environment"
    assert resp.json["known"] == ["production", "staging"]


def test_bare_apply_needs_environment_when_several_are_configured(client):
    resp = client.post("/apply", headers=auth())
    assert resp.status_code == 400
    assert resp.json["error"] == "environment_required"


def test_unreachable_cluster_is_503_not_500(client):
    resp = client.post("/apply", headers=auth(), json={"environment": "staging"})
    assert resp.status_code == 503
    assert resp.json["error"] == "cluster_unavailable"
    assert client.get("/jobs").status_code == 503
    assert client.get("/jobs/helmsman-cronjob-staging-1").status_code == 503


def test_readyz_reports_unreachable_api_server(client):
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json["error"] == "not_ready"


def test_healthz_needs_no_cluster(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_job_names_are_validated_before_any_lookup(client):
    assert client.get("/jobs/NOT_a_name").status_code == 404
    assert client.get("/jobs?limit=0").status_code == 400
    assert client.get("/jobs?limit=abc").status_code == 400


def test_unknown_route_and_method_are_json(client):
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.json["error"] == "not_found"
    resp = client.get("/apply")
    assert resp.status_code == 405 and resp.json["error"] == "method_not_allowed"


def test_body_too_large_is_413(client):
    resp = client.post("/apply", headers=auth(), data="x" * (70 * 1024),
                       content_type="application/json")
    assert resp.status_code == 413


def test_metrics_count_refusals(client):
    client.post("/apply")
    client.post("/apply", headers=auth("bad"))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'helm_api_http_requests_total{endpoint="/apply",method="POST",status="401"} 1.0' in text
    assert 'helm_api_http_requests_total{endpoint="/apply",method="POST",status="403"} 1.0' in text


def test_two_apps_have_separate_metrics():
    a = create_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    b = create_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    a.test_client().post("/apply")
    assert "status=\"401\"" not in b.test_client().get("/metrics").get_data(as_text=True)


def test_openapi_lists_every_route_and_the_environments(app, client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    routes = {r.rule.replace("<name>", "{name}") for r in app.url_map.iter_rules()
              if r.endpoint != "static"}
    assert routes == set(doc["paths"])
    env_schema = doc["components"]["schemas"]["ApplyRequest"]["properties"]["environment"]
    assert env_schema["enum"] == ["production", "staging"]
    assert doc["paths"]["/apply"]["post"]["security"] == [{"bearer": []}]
