import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from poller.config import RegistryConfig
from poller.errors import AuthError, UpstreamError
from poller.http import RequestCounter, parse_retry_after
from poller.logs import get_logger, mask, register_secret, setup_logging
from poller.registry.client import RegistryClient


def test_registered_secrets_and_token_patterns_are_masked():
    register_secret("glpat-very-secret")
    assert "glpat-very-secret" not in mask("cloning with glpat-very-secret now")
    assert mask("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert mask("https://user:pw@host/x.git") == "https://user:***@host/x.git"


def test_json_log_lines_carry_context_and_no_secrets():
    register_secret("s3cr3t-token-value")
    stream = io.StringIO()
    setup_logging(level="info", fmt="json", stream=stream)
    get_logger("t").info("build.started", source="gs", detail="token s3cr3t-token-value")
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "build.started" and line["source"] == "gs"
    assert "s3cr3t-token-value" not in stream.getvalue()


def test_retry_after_forms():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412480 - 60) == 60.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


class _Scripted(BaseHTTPRequestHandler):
    """A tiny registry stand-in answering from a script of (status, headers, body)."""

    def _answer(self):
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        status, headers, body = self.server.script(self)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *a):
        pass


@pytest.fixture
def scripted():
    servers = []

    def start(script):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        srv.script, srv.seen = script, []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    yield start
    for s in servers:
        s.shutdown()


def test_registry_503_with_retry_after_is_an_upstream_error(scripted):
    srv = scripted(lambda h: (503, {"Retry-After": "17"}, b"busy"))
    client = RegistryClient(RegistryConfig(url=f"127.0.0.1:{srv.server_address[1]}", insecure=True))
    with pytest.raises(UpstreamError) as exc:
        client.head_manifest("gs", "staging")
    assert exc.value.retry_after == 17 and exc.value.status == 503


def test_registry_tag_listing_follows_link_pagination(scripted):
    pages = {
        "/v2/gs/tags/list?n=2": ({"Link": '</v2/gs/tags/list?n=2&last=b>; rel="next"'}, ["a", "b"]),
        "/v2/gs/tags/list?n=2&last=b": ({}, ["c"]),
    }

    def script(h):
        headers, tags = pages[h.path]
        return 200, {"Content-Type": "application/json", **headers}, json.dumps({"tags": tags}).encode()
    srv = scripted(script)
    counter = RequestCounter()
    client = RegistryClient(RegistryConfig(url=f"127.0.0.1:{srv.server_address[1]}", insecure=True),
                            counter=counter)
    assert client.list_tags("gs", page_size=2) == ["a", "b", "c"]
    assert counter.total() == 2


def test_registry_bearer_token_flow(scripted):
    def script(h):
        if h.path.startswith("/token"):
            assert "scope=repository%3Ags%3Apull" in h.path
            return 200, {"Content-Type": "application/json"}, b'{"token": "tkn"}'
        if h.headers.get("Authorization") != "Bearer tkn":
            port = h.server.server_address[1]
            return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{port}/token",'
                                              f'service="reg",scope="repository:gs:pull"'}, b""
        return 200, {"Docker-Content-Digest": "sha256:abc"}, b""
    srv = scripted(script)
    client = RegistryClient(RegistryConfig(url=f"127.0.0.1:{srv.server_address[1]}", insecure=True))
    assert client.head_manifest("gs", "staging") == "sha256:abc"
    assert client.head_manifest("gs", "staging") == "sha256:abc"
    # One challenge, one token fetch, then the cached token is reused.
    assert [p.split("?")[0] for _, p, _ in srv.seen] == [
        "/v2/gs/manifests/staging", "/token", "/v2/gs/manifests/staging", "/v2/gs/manifests/staging"]


def test_registry_basic_challenge_without_credentials_is_an_auth_error(scripted):
    srv = scripted(lambda h: (401, {"WWW-Authenticate": 'Basic realm="r"'}, b""))
    client = RegistryClient(RegistryConfig(url=f"127.0.0.1:{srv.server_address[1]}", insecure=True))
    with pytest.raises(AuthError):
        client.head_manifest("gs", "staging")


class _Recording(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.lines.append(self.requestline)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    servers = []

    def start():
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
        srv.lines = []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.shutdown()


def test_sessions_honour_the_proxy_environment_on_every_request(http_server, monkeypatch):
    """The proxy settings are read once per session and host (not on each request), with the
    same result: ``HTTP_PROXY`` carries every request to a host, ``NO_PROXY`` hosts go direct."""
    from poller.http import make_session

    proxy, direct = http_server(), http_server()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("http_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    session = make_session("test")
    for i in range(3):
        assert session.get(f"http://registry.invalid/v2/x/tags/list?n={i}").text == "ok"
        assert session.get(f"http://127.0.0.1:{direct.server_port}/v2/?n={i}").text == "ok"
    assert proxy.lines == [f"GET http://registry.invalid/v2/x/tags/list?n={i} HTTP/1.1" for i in range(3)]
    assert direct.lines == [f"GET /v2/?n={i} HTTP/1.1" for i in range(3)]
