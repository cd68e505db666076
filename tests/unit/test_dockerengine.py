"""The poller's one Docker engine client: which engine it picks and what its errors say."""

import socket

import pytest

from poller.dockerengine import engine_client
from poller.errors import UpstreamError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docker_host_from_the_environment_is_the_engine_when_none_is_configured():
    url = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(UpstreamError) as exc:
        engine_client(None, environment={"DOCKER_HOST": url}, timeout=5)
    assert url in str(exc.value) and exc.value.upstream == "docker"


def test_tls_settings_that_cannot_be_used_are_an_error_naming_the_engine(tmp_path):
    url = f"tcp://127.0.0.1:{_closed_port()}"
    env = {"DOCKER_HOST": url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path / "none")}
    with pytest.raises(UpstreamError) as exc:
        engine_client(None, environment=env, timeout=5)
    assert url in str(exc.value)


def test_a_configured_url_wins_over_docker_host(tmp_path):
    missing = tmp_path / "no.sock"
    with pytest.raises(UpstreamError) as exc:
        engine_client(f"unix://{missing}", environment={"DOCKER_HOST": "tcp://127.0.0.1:1"}, timeout=5)
    assert str(missing) in str(exc.value)
