"""Registry credentials against a real docker-registry with htpasswd auth: a non-ASCII
password authenticates (sent as UTF-8), and inline credentials in ``registry.url`` work
while only the bare URL is ever shown."""

from __future__ import annotations

import subprocess
import warnings

import pytest
import requests

from poller.artifacts.store import ArtifactStore
from poller.config import parse_config
from poller.errors import AuthError
from poller.registry.client import RegistryClient
from tests.fixtures.services import free_port, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "rëg-pässwörd-✓"


@pytest.fixture
def auth_registry(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    (tmp_path / "htpasswd").write_text(
        f"robot:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    port = free_port()
    (tmp_path / "registry.yml").write_text(f"""version: 0.1
log: {{level: warn}}
storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}
http: {{addr: 127.0.0.1:{port}}}
auth: {{htpasswd: {{realm: slipway-test, path: {tmp_path / 'htpasswd'}}}}}
""")
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "registry.yml")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401,
                   timeout=20, what="docker-registry with htpasswd auth")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_non_ascii_registry_password_authenticates(auth_registry):
    cfg = parse_config({"registry": {"url": auth_registry, "insecure": True, "username": "robot",
                                     "password": PASSWORD}}, env={})
    client = RegistryClient(cfg.registry)
    jar = b"PK\x05\x06" + b"\0" * 18  # an empty zip
    ArtifactStore(client).push("chat", jar, "1.0.0")  # authenticated writes...
    assert client.list_tags("plugins/chat") == ["1.0.0"]  # ...and reads
    wrong = RegistryClient(parse_config({"registry": {"url": auth_registry, "insecure": True,
                                                      "username": "robot", "password": "wrong"}},
                                        env={}).registry)
    with pytest.raises(AuthError):
        wrong.list_tags("plugins/chat")


def test_inline_registry_credentials_authenticate_and_leave_a_bare_url(auth_registry):
    from urllib.parse import quote

    cfg = parse_config({"registry": {"url": f"http://robot:{quote(PASSWORD)}@{auth_registry}"}}, env={})
    assert cfg.registry.url == f"http://{auth_registry}" and cfg.registry.host == auth_registry
    client = RegistryClient(cfg.registry)
    assert client.upstream == f"registry:{auth_registry}"
    assert client.list_tags("plugins/none") == []
