"""The event bus driven by its real producers: a build on dockerd + registry, an update of a
container on a Docker host, a chart apply through a real helm-API stand-in. Each test asserts the
typed event, the metric it moves on ``/metrics`` and the notification arriving at a real HTTP
receiver, all wired the way ``poller run`` wires them."""

from __future__ import annotations

import re
import secrets

import pytest

from poller.charts.watcher import ApplyFailed
from poller.config import parse_config
from poller.events import BuildFinished, BuildStarted, ChartApplied, UpdateFinished
from poller.store import Store
from tests.integration.chart_servers import IndexServer, RecordingHelmApi
from tests.integration.event_support import Observed
from tests.integration.updater_support import build_local_image, push_base, reload_server, retag

pytestmark = pytest.mark.integration


@pytest.fixture
def sink():
    srv = reload_server()
    yield srv
    srv.shutdown()


def hook(sink, path="/hook") -> dict:
    return {"webhooks": [{"url": f"http://127.0.0.1:{sink.server_address[1]}{path}", "format": "json"}]}


def test_a_real_release_build_publishes_moves_builds_total_and_announces_the_release(
        tmp_path, registry, git_repo, docker_host, sink):
    git_repo.seed_scratch_app("one\n")
    git_repo.tag("v1.0.0")
    image = f"{registry.addr}/events-{secrets.token_hex(3)}"
    cfg = parse_config({
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")}, "state_dir": str(tmp_path / "state"),
        "docker": {"base_url": docker_host}, "api": {"listen": None},
        "sources": [{"name": "gs", "git": {"url": git_repo.url}, "branch": "master", "image": image}],
        "notify": hook(sink)}, file="t.yaml", env={})
    store = Store(cfg.store_path)
    seen = Observed(cfg, store)
    key = 'slipway_builds_total{kind="release",result="succeeded",source="gs"}'
    before = seen.metric(key)
    pipeline = seen.runtime.build_pipeline()
    try:
        pipeline.run_once()
    finally:
        pipeline.shutdown()

    started = {e.ref for e in seen.of(BuildStarted)}
    finished = {e.ref: e for e in seen.of(BuildFinished)}
    assert {"branch:master", "tag:v1.0.0"} <= started
    release = finished["tag:v1.0.0"]
    assert release.ok and release.kind == "release" and release.digest and release.tags == ("1.0.0",)
    assert seen.metric(key) == before + 1
    bodies = [b for b in sink.bodies if b.get("event") == "release.deployed"]
    assert [b["image"] for b in bodies] == [image] and bodies[0]["tags"] == "1.0.0"


def test_a_real_update_on_a_docker_host_moves_the_update_metric_and_notifies_through_the_bus(
        tmp_path, registry, docker_client, docker_host, sink):
    build_local_image(docker_client, tmp_path)
    repo = f"events-{secrets.token_hex(3)}"
    push_base(docker_client, registry, repo, "1.0.0")
    name = f"slipway-events-{secrets.token_hex(3)}"
    docker_client.containers.run(f"{registry.addr}/{repo}:1.0.0", name=name, detach=True)
    try:
        cfg = parse_config({
            "registry": {"url": registry.addr, "insecure": True},
            "store": {"path": str(tmp_path / "slipway.db")}, "api": {"listen": None},
            "docker": {"base_url": docker_host}, "notify": hook(sink),
            "updates": {"deployments": [{"name": "prod", "image": f"{registry.addr}/{repo}",
                                         "policy": "minor", "target": {"docker": {"container": name}}}]}},
            file="t.yaml", env={})
        store = Store(cfg.store_path)
        seen = Observed(cfg, store)
        key = 'slipway_updates_total{deployment="prod",result="succeeded"}'
        before = seen.metric(key)
        engine = seen.runtime.engine
        retag(registry, repo, "1.0.0", "1.1.0", label="1.1.0")
        [outcome] = engine.cycle()
        assert outcome.action == "updated", outcome

        [event] = seen.of(UpdateFinished)
        assert (event.deployment, event.ok, event.from_ref, event.to_ref) == ("prod", True, "1.0.0", "1.1.0")
        assert event.update_id == outcome.update_id
        assert seen.metric(key) == before + 1
        [body] = sink.bodies
        assert body["event"] == "update.succeeded" and body["deployment"] == "prod"
        assert "1.0.0 -> 1.1.0 succeeded" in body["text"]
    finally:
        docker_client.containers.get(name).remove(force=True)


def test_a_real_chart_apply_publishes_counts_and_a_refused_one_is_counted_as_failed(tmp_path):
    repo, api = IndexServer(), RecordingHelmApi()
    try:
        repo.add("game-server", "1.3.0")
        cfg = parse_config({
            "registry": {"url": "127.0.0.1:5000"}, "store": {"path": str(tmp_path / "slipway.db")},
            "charts": {"repos": [{"name": "main", "url": repo.url}], "approval": "none",
                       "helm_api": {"url": api.url, "token": "helm-api-token"}}}, file="t.yaml", env={})
        store = Store(cfg.store_path)
        seen = Observed(cfg, store)
        key = 'slipway_chart_applies_total{chart="game-server",repo="main",result="succeeded"}'
        before = seen.metric(key)
        [watcher] = seen.runtime.chart_watchers
        result = watcher.reconcile()
        assert [a.version for a in result.applied] == ["1.3.0"] and len(api.calls) == 1
        [event] = seen.of(ChartApplied)
        assert (event.chart, event.version, event.environment, event.ok) == (
            "game-server", "1.3.0", "production", True)
        assert event.job and re.fullmatch(r"[\w.-]+", event.job)
        assert seen.metric(key) == before + 1

        # The helm API refuses the next one: published as not applied, counted as failed.
        failed_key = key.replace("succeeded", "failed")
        failed_before = seen.metric(failed_key)
        api.fail_with = 503
        repo.add("game-server", "1.4.0")
        with pytest.raises(ApplyFailed):
            watcher.reconcile()
        refused = seen.of(ChartApplied)[-1]
        assert (refused.version, refused.ok) == ("1.4.0", False) and "503" in (refused.error or "")
        assert seen.metric(failed_key) == failed_before + 1
    finally:
        repo.stop()
        api.stop()
