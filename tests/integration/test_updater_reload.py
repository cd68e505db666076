"""Reload after an update on a Docker host: HTTP to a real server (retried until 2xx), exec."""

from __future__ import annotations

import pytest

from poller.updater.history import UpdateHistory
from tests.integration.test_updater_docker import base_image, containers, image_of, run  # noqa: F401
from tests.integration.updater_support import engine_for, push_base, reload_server, retag

pytestmark = pytest.mark.integration


def _data(tmp_path, registry, docker_host, name, reload):
    return {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "docker": {"base_url": docker_host}, "updates": {"deployments": [
                {"name": "game", "image": f"{registry.addr}/game", "policy": "minor",
                 "target": {"docker": {"container": name}}, "reload": reload}]}}


def test_http_reload_retried_until_2xx(tmp_path, registry, docker_client, docker_host, base_image,
                                       containers):  # noqa: F811
    push_base(docker_client, registry, "game", "1.0.0")
    # host networking: the container's address is 127.0.0.1, where the real reload server listens
    box = run(docker_client, containers, "reload", f"{registry.addr}/game:1.0.0", network_mode="host")
    server = reload_server(statuses=[503, 503])
    try:
        reload = {"http": {"port": server.server_address[1], "path": "/admin/reload", "method": "POST",
                           "attempts": 5, "backoff": 0.05}}
        engine, _ = engine_for(_data(tmp_path, registry, docker_host, box.name, reload), tmp_path / "s.db")
        retag(registry, "game", "1.0.0", "1.1.0", label="1.1.0")
        [o] = engine.cycle()
        assert o.action == "updated", o
        assert server.calls == [("POST", "/admin/reload")] * 3
        rec = UpdateHistory(engine.store).list()[0]
        [result] = rec.detail["reload"]
        assert result["ok"] and result["attempts"] == 3 and result["server"] == box.name
        assert image_of(docker_client, box.name) == f"{registry.addr}/game:1.1.0"
        assert docker_client.containers.get(box.name).attrs["HostConfig"]["NetworkMode"] == "host"
    finally:
        server.shutdown()


def test_http_reload_gives_up_bounded_and_reports(tmp_path, registry, docker_client, docker_host,
                                                  base_image, containers):  # noqa: F811
    push_base(docker_client, registry, "game", "1.0.0")
    box = run(docker_client, containers, "reload", f"{registry.addr}/game:1.0.0", network_mode="host")
    server = reload_server(statuses=[500] * 10)
    try:
        reload = {"http": {"port": server.server_address[1], "attempts": 3, "backoff": 0.01}}
        engine, _ = engine_for(_data(tmp_path, registry, docker_host, box.name, reload), tmp_path / "s.db")
        retag(registry, "game", "1.0.0", "1.1.0", label="1.1.0")
        [o] = engine.cycle()
        assert o.action == "failed" and "reload failed" in o.detail
        assert len(server.calls) == 3
        assert UpdateHistory(engine.store).list()[0].status == "failed"
        # a failed update is reported, not retried in a loop: the image is in place, no more calls
        [o] = engine.cycle()
        assert o.action == "up-to-date" and len(server.calls) == 3
    finally:
        server.shutdown()


def test_exec_reload_in_the_container(tmp_path, registry, docker_client, docker_host, base_image,
                                      containers):  # noqa: F811
    push_base(docker_client, registry, "game", "1.0.0")
    box = run(docker_client, containers, "exec", f"{registry.addr}/game:1.0.0")
    reload = {"exec": {"command": ["/bin/busybox", "sh", "-c", "echo reloaded >> /reloads"]}}
    engine, _ = engine_for(_data(tmp_path, registry, docker_host, box.name, reload), tmp_path / "s.db")
    retag(registry, "game", "1.0.0", "1.1.0", label="1.1.0")
    [o] = engine.cycle()
    assert o.action == "updated", UpdateHistory(engine.store).list()[0].detail
    out = docker_client.containers.get(box.name).exec_run(["/bin/busybox", "cat", "/reloads"]).output
    assert out == b"reloaded\n"
    assert UpdateHistory(engine.store).list()[0].detail["reload"][0]["detail"].startswith("exit 0")
