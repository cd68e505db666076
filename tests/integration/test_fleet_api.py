"""The fleet and artifacts HTTP routes, and the poller's auto-rollout job, on real etcd and registry."""

from __future__ import annotations

import io
import zipfile

import pytest

from poller.api import create_app
from poller.artifacts.store import ArtifactStore
from poller.config import parse_config
from poller.fleet import open_state
from poller.fleet.jobs import check_for_releases
from poller.registry.client import RegistryClient
from poller.runtime import Runtime
from poller.store import Store

pytestmark = pytest.mark.integration
AUTH = {"Authorization": "Bearer t0ken-value"}


def jar() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", "name: chat")
    return buf.getvalue()


@pytest.fixture
def app(tmp_path, etcd, registry):  # noqa: F811
    cfg = parse_config({
        "registry": {"url": registry.addr, "insecure": True},
        "api": {"token": "t0ken-value"},
        "fleet": {"etcd": {"endpoints": [etcd.url], "prefix": "/api-test"},
                  "services": {"db": {"image": f"{registry.addr}/x/db"},
                               "api": {"image": f"{registry.addr}/x/api", "depends_on": ["db"]}}},
        "plugins": {"server_types": {"lobby": {"plugins": {"chat": "latest"}}},
                    "environments": {"dev": {"fast_track": True}, "production": {"production": True}}}},
        env={})
    return create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db")))


def test_fleet_views_and_rollout_control(app):
    c = app.test_client()
    assert c.post("/api/v1/fleet/rollouts", json={"service": "db", "version": "2.0.0"}).status_code == 401
    r = c.post("/api/v1/fleet/rollouts", json={"services": {"api": "2.0.0", "db": "2.0.0"}}, headers=AUTH)
    assert r.status_code == 201 and r.json["db"]["state"] == "active"
    assert [d["service"] for d in c.get("/api/v1/fleet/deploy").json] == ["db", "api"]
    assert c.post("/api/v1/fleet/rollouts/api/pause", headers=AUTH).json["state"] == "paused"
    assert c.post("/api/v1/fleet/rollouts/api/abort", headers=AUTH).json["state"] == "aborted"
    body = c.get("/api/v1/fleet").json
    assert set(body) == {"current", "staging", "deploy", "rollouts"}
    assert [d["service"] for d in body["deploy"]] == ["db"]
    r = c.post("/api/v1/fleet/rollouts", json={"service": "nope", "version": "1.0.0"}, headers=AUTH)
    assert r.status_code == 409 and "no service named" in r.json["message"]
    assert c.get("/api/v1/fleet/bogus").status_code == 404


def test_artifact_publish_over_http(app, registry):
    c = app.test_client()
    assert c.post("/api/v1/artifacts/chat?version=1.0.0", data=jar()).status_code == 401
    r = c.post("/api/v1/artifacts/chat?version=1.0.0", data=jar(), headers=AUTH)
    assert r.status_code == 201 and r.json["digest"].startswith("sha256:")
    assert registry.tags("plugins/chat") == ["1.0.0"]
    r = c.post("/api/v1/artifacts/chat?env=production", data=jar(), headers=AUTH)
    assert r.status_code == 409 and "refuses the fast track" in r.json["message"]
    r = c.post("/api/v1/artifacts/chat?env=dev", data=jar(), headers=AUTH)
    assert r.status_code == 201 and "fast-dev" in registry.tags("plugins/chat")
    assert c.post("/api/v1/artifacts/chat?version=nope", data=jar(), headers=AUTH).status_code == 409


def test_a_new_release_in_the_registry_starts_a_rollout(app, registry):
    cfg = app.extensions["slipway"].config
    client = RegistryClient(cfg.registry)
    store = ArtifactStore(client, "x")  # any manifest will do: only the tags are read
    state = open_state(cfg.fleet)
    store.push("db", jar(), "1.0.0")
    assert check_for_releases(state, client) == {"db": "1.0.0"}
    assert check_for_releases(state, client) == {}  # already rolling 1.0.0
    store.push("db", jar(), "1.1.0")
    store.push("db", jar(), "2.0.0-rc.1")
    assert check_for_releases(state, client) == {"db": "1.1.0"}
    assert state.rollout("db").detail["reason"] == "new image"
