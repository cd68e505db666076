"""Where a container's HTTP port is reached from its host (one answer for fleet health checks
and plugin probes). Which engine is used is tested end to end in
tests/integration/test_updater_docker.py (DOCKER_HOST naming a second engine address)."""

from __future__ import annotations

from poller.docker_engine import http_address


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
