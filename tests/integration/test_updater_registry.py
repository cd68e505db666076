"""The image watcher against a real registry: failures back off without false updates, and a
repository with 1,000 tags is listed page by page."""

from __future__ import annotations

import math

import pytest
import requests

from poller.http import RequestCounter
from poller.updater.history import UpdateHistory
from tests.integration.test_updater_docker import base_image, containers, image_of, run  # noqa: F401
from tests.integration.updater_support import (MANIFEST, engine_for, failing_front, push_base,
                                                    retag)

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_registry_500s_back_off_without_false_updates(tmp_path, registry, docker_client, docker_host,
                                                      base_image, containers):  # noqa: F811
    d1 = push_base(docker_client, registry, "game", "staging")
    front = failing_front(registry, retry_after=30)
    try:
        image = f"{front.addr}/game"
        docker_client.images.pull(image, tag="staging")
        box = run(docker_client, containers, "staging", f"{image}:staging@{d1}")
        clock = Clock()
        data = {"registry": {"url": registry.addr, "insecure": True},
                "store": {"path": str(tmp_path / "s.db")}, "docker": {"base_url": docker_host},
                "updates": {"registries": [{"url": front.addr, "insecure": True}], "deployments": [
                    {"name": "staging", "image": image, "policy": "digest", "tag": "staging",
                     "target": {"docker": {"container": box.name}}}]}}
        engine, _ = engine_for(data, tmp_path / "s.db", clock=clock)
        assert [o.action for o in engine.cycle()] == ["up-to-date"]

        # The registry starts failing while the tag moves: no update, no guess.
        front.failing = True
        d2 = retag(registry, "game", "staging", "staging", label="moved during the outage")
        [o] = engine.cycle()
        assert o.action == "no-offer"
        state = UpdateHistory(engine.store).watcher_state(image)
        assert state["failures"] == 1 and "500" in state["last_error"]
        assert state["retry_at"] == clock.now + 30  # Retry-After honoured

        # Within the back-off the registry is not asked at all.
        asked = len(front.seen)
        for _ in range(3):
            assert [o.action for o in engine.cycle()] == ["no-offer"]
        assert len(front.seen) == asked

        # After it, still failing: one more try, a longer wait, still no update.
        clock.now += 31
        assert [o.action for o in engine.cycle()] == ["no-offer"]
        assert len(front.seen) == asked + 1
        assert UpdateHistory(engine.store).watcher_state(image)["failures"] == 2
        assert UpdateHistory(engine.store).list() == []
        assert image_of(docker_client, box.name) == f"{image}:staging@{d1}"

        # The registry recovers: the real change is applied, once.
        front.failing = False
        clock.now += 120
        [o] = engine.cycle()
        assert (o.action, o.to_ref) == ("updated", f"staging@{d2}")
        assert image_of(docker_client, box.name) == f"{image}:staging@{d2}"
        assert UpdateHistory(engine.store).watcher_state(image)["failures"] == 0
        assert [o.action for o in engine.cycle()] == ["up-to-date"]
    finally:
        front.shutdown()


def test_thousand_tags_listed_with_pagination(tmp_path, registry, docker_client, docker_host,
                                              base_image, containers):  # noqa: F811
    """1,000 tags pushed to the real registry (one manifest PUT per tag), listed through a
    paginating front (see ``_Front._tags_page``): every page is followed, the newest wins."""
    push_base(docker_client, registry, "many", "1.0.0")
    manifest = requests.get(f"{registry.url}/v2/many/manifests/1.0.0", headers={"Accept": MANIFEST},
                            timeout=10).content
    with requests.Session() as s:
        for i in range(1, 1000):
            s.put(f"{registry.url}/v2/many/manifests/1.0.{i}", data=manifest,
                  headers={"Content-Type": MANIFEST}, timeout=10).raise_for_status()
    assert len(registry.tags("many")) == 1000
    front = failing_front(registry, paginate=True)
    try:
        image = f"{front.addr}/many"
        docker_client.images.pull(image, tag="1.0.0")
        box = run(docker_client, containers, "many", f"{image}:1.0.0")
        counter = RequestCounter()
        data = {"registry": {"url": registry.addr, "insecure": True},
                "store": {"path": str(tmp_path / "s.db")}, "docker": {"base_url": docker_host},
                "updates": {"registries": [{"url": front.addr, "insecure": True}], "deployments": [
                    {"name": "many", "image": image, "policy": "patch",
                     "target": {"docker": {"container": box.name}}}]}}
        engine, _ = engine_for(data, tmp_path / "s.db", counter=counter, page_size=200)
        [o] = engine.cycle()
        assert (o.action, o.from_ref, o.to_ref) == ("updated", "1.0.0", "1.0.999")
        assert image_of(docker_client, box.name) == f"{image}:1.0.999"
        counter.reset()
        pages = front.pages
        assert [o.action for o in engine.cycle()] == ["up-to-date"]
        assert front.pages - pages == math.ceil(1000 / 200)
        assert counter.total() == math.ceil(1000 / 200)  # one request per page, nothing else
        assert UpdateHistory(engine.store).watcher_state(image)["tags"] == 1000
    finally:
        front.shutdown()
