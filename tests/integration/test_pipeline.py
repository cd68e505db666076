"""The pipeline core end to end: real git, real dockerd, real docker-registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from poller.config import parse_config
from poller.http import RequestCounter
from poller.runtime import build_pipeline
from tests.fixtures.services import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REPO = "game-server"


def make_config(tmp_path, registry, git_repo, **source_extra) -> dict:
    return {
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")},
        "state_dir": str(tmp_path / "state"),
        "build": {"concurrency": 2, "retry_initial": 3600},
        "api": {"listen": None},
        "sources": [{"name": "game-server", "git": {"url": git_repo.url}, "branch": "master",
                     "image": f"{registry.addr}/{REPO}", **source_extra}],
    }


def write_config(tmp_path, data) -> Path:
    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def pipeline_for(data, docker_host, counter=None):
    data = {**data, "docker": {**data.get("docker", {}), "base_url": docker_host}}
    return build_pipeline(parse_config(data, file="test.yaml"), counter=counter)


def poller(*args, env_extra=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "poller", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, **kw)


def test_branch_head_becomes_staging_with_labels(tmp_path, registry, git_repo, docker_host):
    sha = git_repo.seed_scratch_app("hello v1\n")
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))

    res = poller("once", "--config", str(cfg), "--json", env_extra={"DOCKER_HOST": docker_host})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    actions = out["sources"][0]["actions"]
    assert [(a["ref"], a["action"], a["status"]) for a in actions] == [
        ("branch:master", "build", "succeeded")]

    assert registry.tags(REPO) == sorted(["staging", f"sha-{sha[:12]}"])
    labels = registry.labels(REPO, "staging")
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.source"] == git_repo.url
    assert labels["org.opencontainers.image.version"] == f"sha-{sha[:12]}"
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert registry.digest(REPO, "staging") == actions[0]["digest"]

    # The store kept the history, with the log.
    status = poller("status", "--config", str(cfg), "--json")
    builds = json.loads(status.stdout)["builds"]
    assert builds[0]["status"] == "succeeded" and builds[0]["sha"] == sha
    assert builds[0]["digest"] == actions[0]["digest"] and builds[0]["duration"] > 0
    log = poller("status", "--config", str(cfg), "--log", str(builds[0]["id"]))
    assert "pushing" in log.stdout and "Step" in log.stdout

    # A second pass finds everything in sync: no build, nothing pushed again.
    pushes_before = len(registry.manifest_pushes(REPO))
    res2 = poller("once", "--config", str(cfg), "--json", env_extra={"DOCKER_HOST": docker_host})
    assert res2.returncode == 0, res2.stderr
    assert [a["action"] for a in json.loads(res2.stdout)["sources"][0]["actions"]] == ["up-to-date"]
    assert len(registry.manifest_pushes(REPO)) == pushes_before


def test_tags_releases_prereleases_and_odd_tags(tmp_path, registry, git_repo, docker_host):
    first = git_repo.seed_scratch_app("one\n")
    git_repo.tag("v1.0.0")
    git_repo.tag("1.1.0-rc.1", annotated=False)
    for odd in ("latest", "v1.2", "release-3"):
        git_repo.tag(odd)
    second = git_repo.commit("two", {"app.txt": "two\n"})
    git_repo.tag("v1.1.0")

    pipeline = pipeline_for(make_config(tmp_path, registry, git_repo), docker_host)
    try:
        reports = pipeline.run_once()
    finally:
        pipeline.shutdown()
    assert reports[0].error is None
    kinds = {a.ref: (a.kind, a.status) for a in reports[0].actions}
    assert kinds == {
        "branch:master": ("staging", "succeeded"),
        "tag:v1.1.0": ("release", "succeeded"),
        "tag:1.1.0-rc.1": ("prerelease", "succeeded"),
        "tag:v1.0.0": ("release", "succeeded"),
    }
    assert registry.tags(REPO) == sorted(["staging", f"sha-{second[:12]}", "1.0.0", "1.1.0",
                                          "1.1.0-rc.1"])
    assert registry.labels(REPO, "1.0.0")["org.opencontainers.image.revision"] == first
    assert registry.labels(REPO, "1.0.0")["org.opencontainers.image.version"] == "1.0.0"
    assert registry.labels(REPO, "1.1.0")["org.opencontainers.image.revision"] == second


def test_rollback_is_a_newer_tag_on_an_older_commit(tmp_path, registry, git_repo, docker_host):
    good = git_repo.seed_scratch_app("good\n")
    git_repo.tag("v1.0.0")
    git_repo.commit("bad", {"app.txt": "bad\n"})
    git_repo.tag("v1.1.0")
    pipeline = pipeline_for(make_config(tmp_path, registry, git_repo), docker_host)
    try:
        pipeline.run_once()
        git_repo.tag("v1.1.1", sha=good)
        reports = pipeline.run_once()
    finally:
        pipeline.shutdown()
    built = [a for a in reports[0].actions if a.action == "build"]
    assert [(a.ref, a.status) for a in built] == [("tag:v1.1.1", "succeeded")]
    assert registry.labels(REPO, "1.1.1")["org.opencontainers.image.revision"] == good


def test_new_merge_moves_staging_and_unchanged_cycle_is_cheap(tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    data = make_config(tmp_path, registry, git_repo)
    counter = RequestCounter()
    pipeline = pipeline_for(data, docker_host, counter=counter)
    try:
        first = pipeline.reconcile_source("game-server")
        pipeline.wait_for_builds()
        assert [a.status for a in first.actions] == ["succeeded"]
        # Next cycle sees the image and records the source as converged.
        counter.reset()
        second = pipeline.reconcile_source("game-server")
        assert [a.action for a in second.actions] == ["up-to-date"]
        assert counter.total() <= 3  # HEAD staging (+ labels once: cached by digest afterwards)
        # Unchanged refs: the registry is not asked at all (git ls-remote is the one request).
        counter.reset()
        third = pipeline.reconcile_source("game-server")
        assert third.skipped_registry and counter.total() == 0

        new = git_repo.commit("merge", {"app.txt": "v2\n"})
        fourth = pipeline.reconcile_source("game-server")
        pipeline.wait_for_builds()
        assert [(a.action, a.status) for a in fourth.actions] == [("build", "succeeded")]
    finally:
        pipeline.shutdown()
    assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == new


def test_broken_dockerfile_fails_with_log_backs_off_and_fix_goes_through(
        tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    bad = git_repo.commit("break it", {"Dockerfile": "FROM scratch\nRUN [\"/does-not-exist\"]\n"})
    data = make_config(tmp_path, registry, git_repo)
    pipeline = pipeline_for(data, docker_host)
    try:
        r1 = pipeline.run_once()
        a1 = r1[0].actions[0]
        assert (a1.sha, a1.status) == (bad, "failed")
        rec = pipeline.store.get_build(a1.build_id)
        assert rec.status == "failed" and "does-not-exist" in rec.log
        # Retried with back-off, not in a loop: the next pass waits.
        r2 = pipeline.run_once()
        assert r2[0].actions[0].action == "backoff"
        assert len(pipeline.store.builds()) == 1
        fixed = git_repo.commit("fix", {"Dockerfile": open(git_repo.work / "Dockerfile").read()
                                        .replace('RUN ["/does-not-exist"]', 'COPY busybox /bin/busybox')})
        r3 = pipeline.run_once()
        assert (r3[0].actions[0].sha, r3[0].actions[0].status) == (fixed, "succeeded")
    finally:
        pipeline.shutdown()
    assert registry.tags(REPO) == sorted(["staging", f"sha-{fixed[:12]}"])


def test_crash_between_pushes_is_repaired_by_retag_not_rebuild(tmp_path, registry, git_repo, docker_host):
    from poller.builds.builder import BuildPlan

    sha = git_repo.seed_scratch_app("v1\n")
    data = make_config(tmp_path, registry, git_repo)
    pipeline = pipeline_for(data, docker_host)
    try:
        # What a crash after the first push leaves behind: sha-<head> pushed, 'staging' not.
        plan = BuildPlan(source="game-server", image=f"{registry.addr}/{REPO}", ref="branch:master",
                         kind="staging", sha=sha, version=f"sha-{sha[:12]}", tags=(f"sha-{sha[:12]}",))
        pipeline.builder.build(plan, pipeline.sources["game-server"], pipeline.cfg.sources[0],
                               lambda _: None)
        assert registry.tags(REPO) == [f"sha-{sha[:12]}"]
        reports = pipeline.run_once()
    finally:
        pipeline.shutdown()
    assert [a.action for a in reports[0].actions] == ["retag"]
    assert pipeline.store.builds() == []
    assert registry.digest(REPO, "staging") == registry.digest(REPO, f"sha-{sha[:12]}")
    wait_until(lambda: registry.manifest_pushes(REPO, "staging"), what="staging push event")
    assert len(registry.manifest_pushes(REPO, f"sha-{sha[:12]}")) == 1


def test_killed_mid_build_is_built_exactly_once_more(tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    # A build step that takes long enough to kill the poller in the middle of it.
    git_repo.commit("slow", {"Dockerfile": open(git_repo.work / "Dockerfile").read() +
                             'RUN ["/bin/busybox", "sleep", "5"]\n'})
    git_repo.tag("v2.0.0")
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    env = {**os.environ, "DOCKER_HOST": docker_host}
    proc = subprocess.Popen([sys.executable, "-m", "poller", "once", "--config", str(cfg)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from poller.store import Store

    store = Store(tmp_path / "slipway.db")
    wait_until(lambda: any(b.status == "running" and "sleep" in (b.log or "") or b.status == "running"
                           for b in store.builds()), timeout=60, what="a running build")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert registry.tags(REPO) == []

    res = poller("once", "--config", str(cfg), "--json", env_extra={"DOCKER_HOST": docker_host})
    assert res.returncode == 0, res.stderr
    statuses = sorted((b.ref, b.status) for b in store.builds())
    # Every build the killed process started is closed as interrupted; each image is built
    # exactly once more, and each tag was pushed exactly once.
    assert ("tag:v2.0.0", "succeeded") in statuses and ("branch:master", "succeeded") in statuses
    assert all(s in ("interrupted", "succeeded") for _, s in statuses)
    assert sum(1 for r, s in statuses if s == "succeeded") == 2
    assert registry.tags(REPO)[:1] == ["2.0.0"]
    wait_until(lambda: len(registry.manifest_pushes(REPO, "2.0.0")) >= 1, what="push event for 2.0.0")
    assert len(registry.manifest_pushes(REPO, "2.0.0")) == 1
    assert len(registry.manifest_pushes(REPO, "staging")) == 1


def test_registry_down_fails_the_pass_and_marks_nothing_done(tmp_path, registry, git_repo, docker_host):
    from tests.fixtures.services import stop_registry

    git_repo.seed_scratch_app("v1\n")
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    stop_registry(registry)
    res = poller("once", "--config", str(cfg), "--json", env_extra={"DOCKER_HOST": docker_host})
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert out["ok"] is False and "registry" in out["sources"][0]["error"]
    assert out["sources"][0]["actions"] == []


def test_concurrency_limit_and_layer_cache(tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    git_repo.tag("v1.0.0")
    git_repo.tag("v1.0.1")
    data = make_config(tmp_path, registry, git_repo)
    data["build"]["concurrency"] = 1
    pipeline = pipeline_for(data, docker_host)
    try:
        reports = pipeline.run_once()
        assert all(a.status == "succeeded" for a in reports[0].actions)
    finally:
        pipeline.shutdown()
    builds = sorted(pipeline.store.builds(), key=lambda b: b.started_at)
    assert len(builds) == 3
    # concurrency=1: no two builds overlapped in time.
    for a, b in zip(builds, builds[1:]):
        assert a.finished_at <= b.started_at
    # The same tree built again reuses the engine's layer cache.
    assert "Using cache" in builds[-1].log


def test_one_build_per_image_and_ref_at_a_time(tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    git_repo.commit("slow", {"Dockerfile": open(git_repo.work / "Dockerfile").read() +
                             'RUN ["/bin/busybox", "sleep", "2"]\n'})
    pipeline = pipeline_for(make_config(tmp_path, registry, git_repo), docker_host)
    try:
        first = pipeline.reconcile_source("game-server", force=True)
        second = pipeline.reconcile_source("game-server", force=True)
        pipeline.wait_for_builds()
    finally:
        pipeline.shutdown()
    assert [a.action for a in first.actions] == ["build"]
    assert [a.action for a in second.actions] == ["in-flight"]
    assert len(pipeline.store.builds()) == 1


def test_reconcile_between_a_builds_two_pushes_does_not_push_staging_again(
        tmp_path, registry, git_repo, docker_host):
    """A build pushes ``sha-<head>`` and then ``staging``. A reconcile that lands between the
    two (a busy machine, a short interval) used to see ``sha-<head>`` already in the registry,
    ``staging`` still at the old commit, and re-tag ``staging`` itself: one more push of it
    than builds. While a build of the ref is in flight, the reconcile must leave it alone."""
    import threading

    git_repo.seed_scratch_app("v1\n")
    pipeline = pipeline_for(make_config(tmp_path, registry, git_repo), docker_host)
    image = f"{registry.addr}/{REPO}"
    between_pushes, go_on = threading.Event(), threading.Event()

    def hold_before_staging_push(plan, text):
        if text == f"--> pushing {image}:staging\n" and plan.sha == second:
            between_pushes.set()
            go_on.wait(60)

    try:
        pipeline.run_once()
        second = git_repo.commit("merge", {"app.txt": "v2\n"})
        pipeline.on_build_log = hold_before_staging_push
        assert [a.action for a in pipeline.reconcile_source(REPO, force=True).actions] == ["build"]
        wait_until(between_pushes.is_set, timeout=120, what="the build between its two pushes")
        assert f"sha-{second[:12]}" in registry.tags(REPO)
        during = pipeline.reconcile_source(REPO, force=True)
        go_on.set()
        pipeline.wait_for_builds()
    finally:
        go_on.set()
        pipeline.shutdown()
    assert [(a.action, a.status) for a in during.actions] == [("in-flight", "pending")]
    assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == second
    wait_until(lambda: len(registry.manifest_pushes(REPO, f"sha-{second[:12]}")) == 1,
               what="push event for the second commit")
    wait_until(lambda: len(registry.manifest_pushes(REPO, "staging")) >= 2, what="staging pushes")
    assert len(registry.manifest_pushes(REPO, "staging")) == 2   # one per build, no re-tag
