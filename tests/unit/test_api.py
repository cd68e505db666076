"""The poller's API: tokens on every change, JSON errors, approvals through HTTP."""

import pytest

from poller.api import create_app
from poller.approvals import ApprovalQueue
from poller.config import parse_config
from poller.runtime import Runtime
from poller.store import Store


@pytest.fixture
def app(tmp_path):
    cfg = parse_config({"registry": {"url": "r:5000"}, "api": {"token": "t0ken-value", "public_read": True},
                        "sources": [{"name": "gs", "git": {"url": "file:///x"}, "branch": "master",
                                     "image": "r:5000/gs"}]}, env={})
    store = Store(tmp_path / "s.db")
    return create_app(Runtime(config=cfg, store=store))


def test_health_and_read_only_status(app):
    c = app.test_client()
    assert c.get("/healthz").json == {"ok": True}
    body = c.get("/api/v1/status").json
    assert body["sources"][0]["name"] == "gs" and body["approvals"] == []


def test_approval_needs_token_and_is_recorded(app):
    store = app.extensions["slipway"].store
    appr = ApprovalQueue(store).request(kind="deployment", subject="prod/gs", to_version="2.0.0",
                                        from_version="1.9.0")
    c = app.test_client()
    assert c.post(f"/api/v1/approvals/{appr.id}/approve").status_code == 401
    assert c.post(f"/api/v1/approvals/{appr.id}/approve",
                  headers={"Authorization": "Bearer nope"}).status_code == 403
    r = c.post(f"/api/v1/approvals/{appr.id}/approve", headers={"Authorization": "Bearer t0ken-value"},
               json={"by": "alice"})
    assert r.status_code == 200 and r.json["status"] == "approved" and r.json["decided_by"] == "alice"
    # Deciding twice is a conflict, not a crash.
    r2 = c.post(f"/api/v1/approvals/{appr.id}/reject", headers={"Authorization": "Bearer t0ken-value"})
    assert r2.status_code == 409 and "not pending" in r2.json["message"]
    assert c.post("/api/v1/approvals/999/approve",
                  headers={"Authorization": "Bearer t0ken-value"}).status_code == 404


def test_bad_json_is_a_400(app):
    store = app.extensions["slipway"].store
    appr = ApprovalQueue(store).request(kind="chart", subject="gs", to_version="2.0.0")
    r = app.test_client().post(f"/api/v1/approvals/{appr.id}/approve", data="{nope",
                               headers={"Authorization": "Bearer t0ken-value",
                                        "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json["error"] == "bad_json"


def test_unknown_route_is_json_404(app):
    r = app.test_client().get("/nope")
    assert r.status_code == 404 and r.json["error"] == "not_found"


def test_an_unknown_approval_status_filter_is_a_400_naming_the_choices(app):
    # A typo ("?status=aproved") used to answer 200 [] - indistinguishable from "none".
    c = app.test_client()
    r = c.get("/api/v1/approvals?status=aproved")
    assert r.status_code == 400 and r.json["error"] == "bad_request"
    assert "'status'" in r.json["message"] and "approved" in r.json["message"]
    for ok in ("pending", "approved", "rejected", "expired", "superseded", "applied", "all"):
        assert c.get(f"/api/v1/approvals?status={ok}").status_code == 200, ok


def test_metrics_content_type_names_its_charset_once(app):
    content_type = app.test_client().get("/metrics").headers["Content-Type"]
    assert content_type.startswith("text/plain") and content_type.count("charset") == 1, content_type
