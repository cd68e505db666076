"""Switching one container: same configuration on the new image, HTTP health, rollback, recovery."""

from __future__ import annotations

import uuid

import pytest

from poller.fleet.containers import ServiceContainer
from poller.settings.fleet import HealthCheck
from tests.fixtures.services import wait_until
from tests.integration.test_fleet_rollout import build_images

pytestmark = pytest.mark.integration


@pytest.fixture
def images(docker_client, registry, tmp_path):
    build_images(docker_client, tmp_path, registry, {"1.0.0": True, "2.0.0": True, "3.0.0": False})
    return f"{registry.addr}/db"


@pytest.fixture
def container(docker_client, images):
    name = f"slw{uuid.uuid4().hex[:8]}-db"
    docker_client.containers.run(f"{images}:1.0.0", name=name, detach=True, environment={"MODE": "blue"},
                                 labels={"team": "core"}, ports={"8080/tcp": ("127.0.0.1", None)},
                                 restart_policy={"Name": "unless-stopped"})
    yield name
    for n in (name, name + "-old"):
        try:
            docker_client.containers.get(n).remove(force=True)
        except Exception:
            pass


def test_switch_keeps_the_configuration_and_checks_http_health(docker_client, images, container):
    svc = ServiceContainer(docker_client, container, images, HealthCheck(kind="http", port=8080, timeout=8),
                           stop_timeout=1)
    assert svc.version() == "1.0.0"
    svc.pull("2.0.0")
    assert svc.switch("2.0.0") == (True, "healthy")
    c = docker_client.containers.get(container)
    assert c.attrs["Config"]["Image"].endswith(":2.0.0") and svc.version() == "2.0.0"
    assert "MODE=blue" in c.attrs["Config"]["Env"] and c.labels["team"] == "core"
    assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert c.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    assert [x.name for x in docker_client.containers.list(all=True, filters={"name": container})] == [container]

    # 3.0.0 has no /health: the switch fails and 2.0.0 is back
    svc.pull("3.0.0")
    ok, reason = svc.switch("3.0.0")
    assert not ok and "not healthy" in reason
    assert svc.version() == "2.0.0"


def test_recover_puts_back_a_container_a_killed_agent_left_renamed(docker_client, images, container):
    svc = ServiceContainer(docker_client, container, images, HealthCheck(), stop_timeout=1)
    old = docker_client.containers.get(container)
    old.stop(timeout=1)
    old.rename(container + "-old")  # the agent died right here
    assert svc.version() is None and svc.exists()
    svc.recover()
    assert svc.version() == "1.0.0"


def test_a_failed_switch_returns_only_once_the_old_version_is_healthy_again(docker_client, images, container):
    """The agent holds the machine's quorum slot until the switch returns: a rollback's container
    still starting would be a second machine down the moment another one takes the slot."""
    svc = ServiceContainer(docker_client, container, images, HealthCheck(timeout=20), stop_timeout=1)
    wait_until(lambda: docker_client.containers.get(container).attrs["State"]["Health"]["Status"] == "healthy",
               timeout=30, what="1.0.0 healthy")
    svc.pull("3.0.0")
    ok, reason = svc.switch("3.0.0")
    assert not ok and "unhealthy" in reason
    c = docker_client.containers.get(container)
    assert c.attrs["Config"]["Image"].endswith(":1.0.0")
    assert c.attrs["State"]["Health"]["Status"] == "healthy", c.attrs["State"]["Health"]
