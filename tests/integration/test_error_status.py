"""Both Flask apps answer an error of the tree with the same status, from one table
(``poller.httpapi.STATUS``): an upstream that cannot be reached is a 503 on the poller's API
(etcd stopped under ``/api/v1/fleet``) as on the helm API (its cluster unreachable), and an
upstream that refuses the service's credentials is a 403 on both (the registry here; the
cluster's RBAC in ``tests/cluster/test_kube_clients.py``)."""

from __future__ import annotations

import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from kubernetes import client as k8s

from helm_api import create_app as create_helm_app
from helm_api.config import HelmApiConfig
from helm_api.kube import Kube
from poller.api import create_app
from poller.config import parse_config
from poller.errors import AuthError, UpstreamError
from poller.httpapi import status_for
from poller.runtime import Runtime
from poller.store import Store
from tests.fixtures.services import free_port, wait_until

pytestmark = pytest.mark.integration

TOKEN = "error-status-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_helm_api():
    cfg = k8s.Configuration()
    cfg.host = f"http://127.0.0.1:{_closed_port()}"
    cfg.retries = False
    return create_helm_app(HelmApiConfig(token=TOKEN), kube=Kube(k8s.ApiClient(cfg)))


def poller_api(tmp_path: Path, **sections):
    cfg = parse_config({"registry": {"url": "127.0.0.1:1"}, "api": {"token": TOKEN}, **sections},
                       file="test.yaml", env={})
    return create_app(Runtime(cfg, store=Store(tmp_path / "s.db")))


def test_an_etcd_outage_on_the_fleet_api_is_503_like_an_unreachable_cluster_on_the_helm_api(
        etcd, tmp_path):
    app = poller_api(tmp_path, fleet={"etcd": {"endpoints": [etcd.url], "timeout": 2},
                                      "services": {"lobby": {"image": "127.0.0.1:1/lobby"}}})
    client = app.test_client()
    assert client.get("/api/v1/fleet").status_code == 200
    etcd.stop()
    fleet = client.get("/api/v1/fleet")
    started = client.post("/api/v1/fleet/rollouts", json={"service": "lobby", "version": "2.0.0"},
                          headers=AUTH)

    helm = unreachable_helm_api()
    try:
        jobs = helm.test_client().get("/jobs")
        applied = helm.test_client().post("/apply", json={"environment": "staging"}, headers=AUTH)
    finally:
        helm.extensions["helm_api"]["runner"].stop()

    table = status_for(UpstreamError("x"))[0]
    assert table == 503
    assert [r.status_code for r in (fleet, started, jobs, applied)] == [table] * 4, \
        [r.json for r in (fleet, started, jobs, applied)]
    assert fleet.json["error"] == started.json["error"] == "upstream_unavailable"
    assert jobs.json["error"] == applied.json["error"] == "cluster_unavailable"


# -- a registry that wants credentials -----------------------------------------------------
@dataclass
class AuthRegistry:
    addr: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_auth_registry(root: Path, *, user: str, password: str) -> AuthRegistry:
    """A docker-registry on a free port with basic auth (htpasswd, bcrypt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    root.mkdir(parents=True, exist_ok=True)
    (root / "htpasswd").write_text(f"{user}:{hashed}\n")
    port = free_port()
    config = root / "registry.yml"
    config.write_text(f"""version: 0.1
log: {{level: info}}
storage:
  filesystem: {{rootdirectory: {root / 'data'}}}
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: slipway-test
    path: {root / 'htpasswd'}
""")
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - the registry writes it while it runs
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    reg = AuthRegistry(addr=f"127.0.0.1:{port}", process=proc)
    try:
        wait_until(lambda: requests.get(f"http://{reg.addr}/v2/", timeout=1).status_code == 401,
                   timeout=20, what="the registry with auth to answer /v2/ with 401")
    except AssertionError:
        reg.stop()
        raise AssertionError("docker-registry did not start:\n"
                             + (root / "registry.log").read_text()[-2000:]) from None
    return reg


def publish_with_wrong_password(tmp_path: Path, reg: AuthRegistry):
    """``POST /api/v1/artifacts/chat`` of a poller whose registry refuses its password."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", "name: chat\n")
    app = poller_api(
        tmp_path, registry={"url": reg.addr, "insecure": True, "username": "slipway",
                            "password": "not-the-password"},
        plugins={"server_types": {"lobby": {"plugins": {"chat": "latest"}}},
                 "environments": {"production": {}}})
    return app.test_client().post("/api/v1/artifacts/chat?version=1.0.0", data=buf.getvalue(),
                                  headers=AUTH)


@pytest.fixture
def auth_registry(tmp_path):
    reg = start_auth_registry(tmp_path / "auth-registry", user="slipway", password="the-password")
    yield reg
    reg.stop()


def test_a_registry_refusing_the_pollers_credentials_is_the_tables_403(auth_registry, tmp_path):
    r = publish_with_wrong_password(tmp_path, auth_registry)
    assert r.status_code == status_for(AuthError("x"))[0] == 403, r.json
    assert r.json["error"] == "upstream_refused" and "401" in r.json["message"], r.json
