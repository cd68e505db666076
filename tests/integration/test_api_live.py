"""The poller API as ``poller run`` serves it (waitress, a real process), fuzzed by schemathesis
over HTTP with the right token, a wrong one and none: zero 5xx, zero answers outside the
document. Also: an oversized unauthenticated POST is refused before its body is sent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.fixtures.fuzz import run_all
from tests.fixtures.services import free_port, wait_until
from tests.unit.test_api_openapi import HEADERS, TOKEN

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live-api")
    port = free_port()
    cfg = tmp / "slipway.yaml"
    cfg.write_text(yaml.safe_dump({
        "registry": {"url": "127.0.0.1:1"},
        "store": {"path": str(tmp / "slipway.db")},
        "state_dir": str(tmp / "state"),
        "poll": {"interval": 3600, "jitter": 0, "resync": 3600},
        "api": {"listen": f"127.0.0.1:{port}", "token": TOKEN, "public_read": True,
                "gitlab_webhook_token": "gl-secret", "github_webhook_secret": "gh-secret",
                "registry_webhook_token": "reg-secret"},
        "sources": [{"name": "gs", "git": {"url": f"file://{tmp}/no-such-repo.git"},
                     "branch": "master", "image": "127.0.0.1:1/gs"}],
    }))
    log = tmp / "poller.log"
    proc = subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "json", "run",
                             "--config", str(cfg)], cwd=ROOT, env=dict(os.environ),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, timeout=30,
                   what="poller run's API")
        yield url, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("who", sorted(HEADERS))
def test_schemathesis_against_poller_run(live_api, who):
    url, _ = live_api
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures = run_all(schema, HEADERS[who], examples=8, base_url=url)
    assert not failures, "\n\n".join(failures)


def test_poller_run_refuses_a_200mb_post_before_reading_it(live_api):
    _, port = live_api
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /hooks/gitlab HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 209715200\r\n\r\n{")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert r.headers["Server"] == "slipway-api"
