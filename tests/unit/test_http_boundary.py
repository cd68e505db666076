"""The HTTP boundary of both services (poller API and helm API): empty secrets never
authenticate, one bearer-token scheme, bad input is a 4xx JSON error, bodies are bounded,
nothing is served from the working directory, and a production WSGI server serves it all.

The apps are the real ones; the cluster side of the helm API is a real ``kubernetes`` client
aimed at a closed port (so calls that pass auth answer 503, never faked).
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helm_api import create_app as create_helm_app
from helm_api.config import HelmApiConfig, load_settings
from poller.api import create_app, serve_in_thread
from poller.api.webhooks import github_signature
from poller.approvals import ApprovalQueue
from poller.config import parse_config
from poller.runtime import Runtime
from poller.store import Store
from tests.unit.test_helm_api_auth import unreachable_kube

TOKEN = "t0ken-value"


def poller_app(tmp_path, api: dict | None = None, env: dict | None = None, **extra):
    cfg = parse_config({
        "registry": {"url": "127.0.0.1:5000"},
        "api": {"token": TOKEN, "public_read": True, **(api or {})},
        "sources": [{"name": "lobby", "gitlab": {"url": "https://gitlab.example.com",
                                                 "project": "games/lobby"},
                     "branch": "master", "image": "127.0.0.1:5000/lobby"},
                    {"name": "match", "github": {"repo": "studio/matchmaker"}, "branch": "main",
                     "image": "127.0.0.1:5000/matchmaker"}],
        **extra}, env=env or {})
    return create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db")))


def pending_approval(app) -> int:
    store = app.extensions["slipway"].store
    return ApprovalQueue(store).request(kind="chart", subject="prod/gs", to_version="2.0.0").id


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- empty secrets -----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["env", "file"])
def test_an_empty_api_token_never_approves_anything(tmp_path, source):
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    token = "${API_TOKEN}" if source == "env" else f"${{file:{empty}}}"
    app = poller_app(tmp_path, api={"token": token}, env={"API_TOKEN": ""})
    appr = pending_approval(app)
    c = app.test_client()
    for header in ("Bearer ", "Bearer", "bearer  ", ""):
        r = c.post(f"/api/v1/approvals/{appr}/approve", headers={"Authorization": header})
        assert r.status_code == 401, (header, r.json)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.post(f"/api/v1/approvals/{appr}/approve", headers=bearer("x")).status_code == 403
    assert ApprovalQueue(app.extensions["slipway"].store).list()[0].status == "pending"
    assert app.extensions["slipway"].config.api.token is None


def test_an_empty_secret_is_logged_by_name_at_load(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = parse_config({"registry": {"url": "r:5000"},
                            "api": {"github_webhook_secret": "${GH}", "token": "ok-token"}},
                           env={"GH": ""})
    assert cfg.api.github_webhook_secret is None and cfg.api.token is not None
    assert cfg.api.empty_secrets == ("github_webhook_secret",)
    warned = [r.fields for r in caplog.records if r.getMessage() == "config.empty_secret"]
    assert [w["key"] for w in warned] == ["api.github_webhook_secret"]


def test_an_empty_gitlab_token_refuses_a_delivery_without_header(tmp_path):
    app = poller_app(tmp_path, api={"gitlab_webhook_token": "${GL}"}, env={"GL": ""})
    r = app.test_client().post("/hooks/gitlab", json={"object_kind": "push",
                                                      "project": {"path_with_namespace": "games/lobby"}})
    assert r.status_code == 403 and r.json["error"] == "disabled"


def test_an_empty_github_secret_never_validates_a_signature(tmp_path):
    app = poller_app(tmp_path, api={"github_webhook_secret": "${GH}"}, env={"GH": ""})
    body = json.dumps({"zen": "hi"}).encode()
    r = app.test_client().post("/hooks/github", data=body, content_type="application/json",
                               headers={"X-GitHub-Event": "ping",
                                        "X-Hub-Signature-256": github_signature("", body)})
    assert r.status_code == 403


def test_an_empty_registry_token_refuses_an_empty_bearer(tmp_path):
    app = poller_app(tmp_path, api={"registry_webhook_token": "${REG}"}, env={"REG": ""})
    r = app.test_client().post("/hooks/registry", json={"events": []},
                               headers={"Authorization": "Bearer "})
    assert r.status_code == 403


def test_an_empty_helm_api_token_refuses_every_apply(monkeypatch, tmp_path):
    monkeypatch.setenv("HELM_API_TOKEN", "")
    assert load_settings().token is None
    empty = tmp_path / "tok"
    empty.write_text("")
    monkeypatch.delenv("HELM_API_TOKEN")
    monkeypatch.setenv("HELM_API_TOKEN_FILE", str(empty))
    assert load_settings().token is None
    app = create_helm_app(HelmApiConfig(token=""), kube=unreachable_kube())
    try:
        c = app.test_client()
        assert c.post("/apply", headers={"Authorization": "Bearer "}).status_code == 401
        assert c.post("/apply", headers=bearer("anything")).status_code == 403
    finally:
        app.extensions["helm_api"]["runner"].stop()


# -- one bearer scheme for both services -------------------------------------------------------
@pytest.fixture
def both(tmp_path):
    """(client, protected POST path, good body) for the poller API and the helm API."""
    papp = poller_app(tmp_path)
    happ = create_helm_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    yield [(papp.test_client(), f"/api/v1/approvals/{pending_approval(papp)}/approve", "slipway"),
           (happ.test_client(), "/apply", "helm-api")]
    happ.extensions["helm_api"]["runner"].stop()


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token t0ken-value"])
def test_missing_or_malformed_credentials_are_401_with_a_challenge_on_both(both, header):
    for client, path, realm in both:
        r = client.post(path, headers={} if header is None else {"Authorization": header})
        assert r.status_code == 401, (path, header)
        assert r.json["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == f'Bearer realm="{realm}"'


def test_a_wrong_token_is_403_on_both(both):
    for client, path, _ in both:
        r = client.post(path, headers=bearer("wrong"))
        assert r.status_code == 403 and r.json == {"error": "forbidden",
                                                   "message": "the bearer token is not valid"}


def test_the_bearer_scheme_is_case_insensitive_on_both(both):
    for client, path, _ in both:
        r = client.post(path, headers={"Authorization": f"bEaReR {TOKEN}"})
        assert r.status_code not in (401, 403), (path, r.json)


# -- bad input is a 4xx JSON error -------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/builds", "/api/v1/updates", "/api/v1/updates/history"])
@pytest.mark.parametrize("limit", ["abc", "1e3", "-1", "²", "0", "501", "9" * 30, ""])
def test_a_bad_limit_is_400_never_500_and_never_bypasses_the_cap(tmp_path, path, limit):
    r = poller_app(tmp_path).test_client().get(f"{path}?limit={urllib.parse.quote(limit)}")
    assert r.status_code == 400 and r.json["error"] == "bad_request", r.json
    assert "'limit'" in r.json["message"]


@pytest.mark.parametrize("limit", ["²", "abc", "-1", "1e3"])
def test_a_bad_limit_on_the_helm_api_is_400(limit):
    app = create_helm_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    try:
        r = app.test_client().get(f"/jobs?limit={urllib.parse.quote(limit)}")
        assert r.status_code == 400 and r.json["error"] == "bad_request"
    finally:
        app.extensions["helm_api"]["runner"].stop()


@pytest.mark.parametrize("path", ["/api/v1/builds/{}", "/dashboard/builds/{}/log"])
def test_an_id_beyond_64_bits_is_404(tmp_path, path):
    r = poller_app(tmp_path).test_client().get(path.format(2**64))
    assert r.status_code == 404 and r.json["error"] == "not_found"


def test_approving_an_id_beyond_64_bits_is_404(tmp_path):
    r = poller_app(tmp_path).test_client().post(f"/api/v1/approvals/{2**70}/approve",
                                                headers=bearer(TOKEN))
    assert r.status_code == 404


@pytest.mark.parametrize("path, kind", [("/api/v1/approvals/{id}/approve", "api"),
                                         ("/hooks/gitlab", "gitlab")])
def test_deeply_nested_json_is_400(tmp_path, path, kind):
    app = poller_app(tmp_path, api={"gitlab_webhook_token": "gl-secret"})
    headers = {**bearer(TOKEN), "X-Gitlab-Token": "gl-secret"}
    r = app.test_client().post(path.format(id=pending_approval(app)), headers=headers,
                               data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert r.status_code == 400 and r.json["error"] == "bad_json"
    nested = {"by": "x"}
    for _ in range(40):
        nested = {"a": nested}
    r = app.test_client().post(path.format(id=pending_approval(app)), headers=headers,
                               json=nested)
    assert r.status_code == 400


@pytest.mark.parametrize("path, body", [
    ("/api/v1/approvals/{id}/approve", {"by": ["alice"]}),
    ("/api/v1/approvals/{id}/approve", {"by": "alice", "force": True}),
    ("/api/v1/approvals/{id}/reject", {"by": {"name": "bob"}}),
])
def test_wrong_types_and_unknown_fields_are_400(tmp_path, path, body):
    app = poller_app(tmp_path)
    appr = pending_approval(app)
    r = app.test_client().post(path.format(id=appr), headers=bearer(TOKEN), json=body)
    assert r.status_code == 400 and r.json["error"] == "bad_request", r.json
    assert ApprovalQueue(app.extensions["slipway"].store).list()[0].status == "pending"


def test_a_pin_with_a_wrong_version_type_is_400(tmp_path):
    app = poller_app(tmp_path, updates={"deployments": [{
        "name": "lobby", "image": "127.0.0.1:5000/lobby", "policy": "minor",
        "target": {"docker": {"container": "lobby"}}}]})
    for body in ({"version": 3}, {"version": ""}, {"version": "1.0.0", "extra": 1}, [1]):
        r = app.test_client().post("/api/v1/updates/deployments/lobby/pin",
                                   headers=bearer(TOKEN), json=body)
        assert r.status_code == 400, (body, r.json)


@pytest.mark.parametrize("web_url", ["https://gitlab.example.com:99999/games/lobby",
                                     "https://gitlab.example.com:abc/games/lobby",
                                     "http://[::1/x", 17, None, ["x"]])
def test_a_webhook_url_with_a_bad_port_or_type_is_not_a_500(tmp_path, web_url):
    app = poller_app(tmp_path, api={"gitlab_webhook_token": "gl-secret"})
    body = {"object_kind": "push", "ref": "refs/heads/master",
            "project": {"path_with_namespace": "other/thing", "web_url": web_url,
                        "git_http_url": web_url}}
    r = app.test_client().post("/hooks/gitlab", json=body, headers={"X-Gitlab-Token": "gl-secret"})
    assert r.status_code == 202 and r.json["matched"] == []


def test_an_unreachable_upstream_is_503_on_the_poller_api_as_on_the_helm_api(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    app = poller_app(tmp_path, fleet={"etcd": {"endpoints": [f"http://127.0.0.1:{closed}"],
                                               "timeout": 1},
                                      "services": {"lobby": {"image": "127.0.0.1:5000/lobby"}}})
    r = app.test_client().get("/api/v1/fleet")
    assert r.status_code == 503 and r.json["error"] == "upstream_unavailable", r.json


def test_no_fleet_configured_is_404_not_an_etcd_call(tmp_path):
    r = poller_app(tmp_path).test_client().get("/api/v1/fleet")
    assert r.status_code == 404 and r.json["error"] == "fleet_not_configured"


# -- bodies are bounded ------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_json_on_both(tmp_path):
    app = poller_app(tmp_path, api={"github_webhook_secret": "gh"})
    big = b"x" * (5 * 1024 * 1024 + 1)
    r = app.test_client().post("/hooks/github", data=big, content_type="application/json")
    assert r.status_code == 413 and r.json["error"] == "request_entity_too_large"
    happ = create_helm_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    try:
        r = happ.test_client().post("/apply", data=b"x" * (65 * 1024), headers=bearer(TOKEN),
                                    content_type="application/json")
        assert r.status_code == 413 and r.json["error"] == "request_entity_too_large"
    finally:
        happ.extensions["helm_api"]["runner"].stop()


def _raw_request(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


def test_the_served_api_refuses_a_200mb_unauthenticated_post_before_reading_it(tmp_path):
    app = poller_app(tmp_path, api={"github_webhook_secret": "gh"})
    served = serve_in_thread(app, "127.0.0.1:0")
    try:
        # Only the headers are sent: the answer must come without the body being read.
        answer = _raw_request(served.port, b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Content-Length: 209715200\r\n\r\n" + b"{" * 1000)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    finally:
        served.close()


def test_poller_api_is_served_by_a_production_wsgi_server(tmp_path):
    served = serve_in_thread(poller_app(tmp_path), "127.0.0.1:0")
    try:
        r = requests.get(f"http://127.0.0.1:{served.port}/healthz", timeout=10)
        assert r.json() == {"ok": True}
        assert r.headers["Server"] == "slipway-api"  # waitress, not Werkzeug's dev server
    finally:
        served.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{served.port}/healthz", timeout=2)


def test_a_non_ascii_token_sent_as_utf8_is_accepted_by_the_served_api(tmp_path):
    token = "pässwörd-\u2603"
    app = poller_app(tmp_path, api={"token": "${T}"}, env={"T": token})
    appr = pending_approval(app)
    served = serve_in_thread(app, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{served.port}/api/v1/approvals/{appr}/approve"
        ok = requests.post(url, headers={"Authorization": b"Bearer " + token.encode()}, timeout=10)
        assert ok.status_code == 200, ok.text
        wrong = requests.post(url, headers={"Authorization": "Bearer p\xe4ssw\xf6rd"}, timeout=10)
        assert wrong.status_code == 403
    finally:
        served.close()


# -- static files ------------------------------------------------------------------------------
def test_static_serves_nothing_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "config.yaml").write_text("password: hunter2\n")
    monkeypatch.chdir(tmp_path)
    app = poller_app(tmp_path, api={"public_read": False})
    c = app.test_client()
    r = c.get("/static/config.yaml")
    assert r.status_code == 404 and b"hunter2" not in r.data
    # The dashboard's own assets stay public (the page needs them before a token is typed)...
    assert c.get("/dashboard/static/dashboard.css").status_code == 200
    assert c.get("/dashboard/static/../../config.py").status_code == 404
    # ...and nothing else is readable without the token when public_read is off.
    assert c.get("/api/v1/status").status_code == 401
    assert c.get("/dashboard/sections").status_code == 401


# -- GitHub's form-encoded deliveries ----------------------------------------------------------
def _form(payload: dict) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def test_github_form_encoded_ping_and_push_are_accepted(tmp_path):
    app = poller_app(tmp_path, api={"github_webhook_secret": "gh-secret"})
    c = app.test_client()
    ping = _form({"zen": "Design for failure.", "hook_id": 1})
    r = c.post("/hooks/github", data=ping, content_type="application/x-www-form-urlencoded",
               headers={"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-1",
                        "X-Hub-Signature-256": github_signature("gh-secret", ping)})
    assert r.status_code == 200 and r.json["zen"] == "Design for failure."
    push = _form({"ref": "refs/heads/main", "repository": {"full_name": "studio/matchmaker"}})
    r = c.post("/hooks/github", data=push, content_type="application/x-www-form-urlencoded",
               headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-2",
                        "X-Hub-Signature-256": github_signature("gh-secret", push)})
    assert r.status_code == 202 and r.json["matched"] == ["match"]


def test_github_form_encoded_signature_covers_the_raw_body(tmp_path):
    app = poller_app(tmp_path, api={"github_webhook_secret": "gh-secret"})
    body = _form({"zen": "x"})
    signed_json = github_signature("gh-secret", json.dumps({"zen": "x"}).encode())
    r = app.test_client().post("/hooks/github", data=body,
                               content_type="application/x-www-form-urlencoded",
                               headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": signed_json})
    assert r.status_code == 401
    bad = b"payload=%7Bnot-json&payload=2"
    r = app.test_client().post("/hooks/github", data=bad,
                               content_type="application/x-www-form-urlencoded",
                               headers={"X-GitHub-Event": "ping",
                                        "X-Hub-Signature-256": github_signature("gh-secret", bad)})
    assert r.status_code == 400


# -- helm_api_apply_total counts failures --------------------------------------------------------
def test_helm_apply_total_counts_failed_applies_by_outcome():
    app = create_helm_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
    try:
        c = app.test_client()
        c.post("/apply", headers=bearer(TOKEN), data="{nope", content_type="application/json")
        c.post("/apply", headers=bearer(TOKEN), json={"environment": "qa"})
        c.post("/apply", headers=bearer(TOKEN), json={"environment": "staging"})  # 503
        c.post("/apply", headers=bearer("wrong"), json={"environment": "staging"})
        text = c.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["helm_api"]["runner"].stop()
    for labels in ('environment="",outcome="bad_json"', 'environment="",outcome="unknown_environment"',
                   'environment="staging",outcome="cluster_unavailable"',
                   'environment="",outcome="forbidden"'):
        assert f"helm_api_apply_total{{{labels}}} 1.0" in text, labels


# -- authenticated webhook payloads of any shape -----------------------------------------------
_URLS = st.sampled_from(["https://gitlab.example.com:99999/games/lobby", "http://[::1/x",
                         "git@host:games/lobby.git", "ssh://git@h:abc/x", "file:///srv/x.git"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | _URLS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
_KEYS = st.sampled_from(["object_kind", "event_name", "ref", "project", "project_id", "repository",
                         "events", "web_url", "git_http_url", "full_name", "clone_url", "target",
                         "action", "request", "id", "mediaType", "repository", "tag", "host"])
_SHAPED = st.recursive(_JSON, lambda inner: st.dictionaries(_KEYS, inner, max_size=6), max_leaves=30)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(body=st.dictionaries(_KEYS, _SHAPED, max_size=6), event=st.sampled_from(["push", "create", "ping"]))
def test_signed_webhook_payloads_of_any_shape_never_answer_5xx(tmp_path_factory, body, event):
    app = _fuzz_app(tmp_path_factory)
    c = app.test_client()
    raw = json.dumps(body).encode()
    answers = [
        c.post("/hooks/gitlab", data=raw, content_type="application/json",
               headers={"X-Gitlab-Token": "gl-secret"}),
        c.post("/hooks/github", data=raw, content_type="application/json",
               headers={"X-GitHub-Event": event, "X-Hub-Signature-256": github_signature("gh-secret", raw)}),
        c.post("/hooks/registry", data=raw, content_type="application/json",
               headers={"Authorization": "Bearer reg-secret"}),
    ]
    for r in answers:
        assert r.status_code < 500 and r.is_json and "error" in r.json or r.status_code < 300, r.json


_FUZZ_APPS: dict = {}


def _fuzz_app(tmp_path_factory):
    if "app" not in _FUZZ_APPS:
        _FUZZ_APPS["app"] = poller_app(tmp_path_factory.mktemp("fuzz"), api={
            "gitlab_webhook_token": "gl-secret", "github_webhook_secret": "gh-secret",
            "registry_webhook_token": "reg-secret"})
    return _FUZZ_APPS["app"]


def test_one_table_names_the_status_of_every_kind_of_error():
    from helm_api import CODES
    from helm_api.jobs import CronJobInvalid, CronJobMissing, JobNotFound, UnknownEnvironment
    from poller import errors as e
    from poller.httpapi import status_for

    expected = {e.NotFound("x"): 404, e.AuthError("x"): 403, e.UpstreamError("x"): 503,
                e.ResponseTooLarge("x"): 503, e.Conflict("x"): 409, e.PermanentError("x"): 409,
                e.Unprocessable("x"): 422, e.InvalidInput("x"): 400, e.ConfigError("x"): 500,
                e.SlipwayError("x"): 500, CronJobMissing("x"): 404, JobNotFound("x"): 404,
                CronJobInvalid("x"): 422, UnknownEnvironment("", ["staging"]): 400}
    for exc, status in expected.items():
        # the helm API names some codes its own way; the status is the table's on both apps
        assert status_for(exc)[0] == status_for(exc, CODES)[0] == status, exc
    assert status_for(e.UpstreamError("x"), CODES)[1] == "cluster_unavailable"
    assert status_for(e.UpstreamError("x"))[1] == "upstream_unavailable"
    assert status_for(CronJobInvalid("x"), CODES)[1] == "cronjob_invalid"
