"""Where a container's HTTP port is reached from its host (one answer for fleet health checks
and plugin probes). Which engine is used is tested end to end in
tests/integration/test_updater_docker.py (DOCKER_HOST naming a second engine address)."""

from __future__ import annotations

import socket

import pytest

from poller.docker_engine import docker_client, http_address
from poller.errors import UpstreamError


def test_http_address_of_published_host_network_and_plain_containers():
    published = {"HostConfig": {"NetworkMode": "bridge"}, "Config": {"Labels": {}},
                 "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}]}}}
    host = {"HostConfig": {"NetworkMode": "host"}, "Config": {"Labels": {}}, "NetworkSettings": {"Ports": {}}}
    labelled = {**host, "Config": {"Labels": {"slipway.port": "7000"}}}
    plain = {"HostConfig": {"NetworkMode": "bridge"}, "Config": {},
             "NetworkSettings": {"Ports": {}, "Networks": {"bridge": {"IPAddress": "172.17.0.5"}}}}
    starting = {"HostConfig": {}, "Config": {}, "NetworkSettings": {"Ports": None}}
    assert http_address(published, 8080) == ("127.0.0.1", 49153)
    assert http_address(host, 8080) == ("127.0.0.1", 8080)
    assert http_address(labelled, 8080) == ("127.0.0.1", 7000)
    assert http_address(plain, 8080) == ("172.17.0.5", 8080)
    assert http_address(starting, 8080) is None




def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docker_host_from_the_environment_is_the_engine_when_none_is_configured():
    url = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(UpstreamError) as exc:
        docker_client(None, environment={"DOCKER_HOST": url}, timeout=5)
    assert url in str(exc.value) and exc.value.upstream == "docker"


def test_tls_settings_that_cannot_be_used_are_an_error_naming_the_engine(tmp_path):
    url = f"tcp://127.0.0.1:{_closed_port()}"
    env = {"DOCKER_HOST": url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path / "none")}
    with pytest.raises(UpstreamError) as exc:
        docker_client(None, environment=env, timeout=5)
    assert url in str(exc.value)


def test_a_configured_url_wins_over_docker_host(tmp_path):
    missing = tmp_path / "no.sock"
    with pytest.raises(UpstreamError) as exc:
        docker_client(f"unix://{missing}", environment={"DOCKER_HOST": "tcp://127.0.0.1:1"}, timeout=5)
    assert str(missing) in str(exc.value)
