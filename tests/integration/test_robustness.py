"""What no single failure may do: blame a commit for an upstream's outage, or let
``poller once`` report success while builds wait in back-off."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.services import free_port
from tests.integration.test_pipeline import REPO, make_config, poller, write_config

pytestmark = pytest.mark.integration


def test_unreachable_docker_engine_is_an_upstream_error_naming_it_and_no_backoff(
        tmp_path, registry, git_repo):
    sha = git_repo.seed_scratch_app("v1\n")
    engine = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    data = make_config(tmp_path, registry, git_repo)
    data["docker"] = {"base_url": engine}
    cfg = write_config(tmp_path, data)

    for attempt in (1, 2):
        res = poller("once", "--config", str(cfg), "--json")
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr
        (action,) = json.loads(res.stdout)["sources"][0]["actions"]
        # Not the commit's fault: built again on the next pass, never put into back-off.
        assert (action["sha"], action["action"], action["status"]) == (sha, "build", "failed"), attempt
        assert f"docker engine {engine} unreachable" in action["error"]
        assert "internal error" not in action["error"] and "DockerException" not in action["error"]

    status = json.loads(poller("status", "--config", str(cfg), "--json").stdout)
    assert [b["status"] for b in status["builds"]] == ["upstream-error", "upstream-error"]
    assert all(engine in b["error"] for b in status["builds"])


def test_once_exits_non_zero_while_every_plan_is_in_backoff(tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    git_repo.commit("break it", {"Dockerfile": "FROM scratch\nRUN [\"/does-not-exist\"]\n"})
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    env = {"DOCKER_HOST": docker_host}

    first = poller("once", "--config", str(cfg), "--json", env_extra=env)
    assert first.returncode == 1
    second = poller("once", "--config", str(cfg), "--json", env_extra=env)
    out = json.loads(second.stdout)
    assert [a["action"] for a in out["sources"][0]["actions"]] == ["backoff"]
    assert out["ok"] is False
    assert second.returncode == 1


def test_builds_per_cycle_are_capped_newest_first_and_the_rest_wait(
        tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        git_repo.tag(tag)
    data = make_config(tmp_path, registry, git_repo, tags=True)
    data["build"]["max_per_cycle"] = 2
    cfg = write_config(tmp_path, data)
    env = {"DOCKER_HOST": docker_host}

    first = json.loads(poller("once", "--config", str(cfg), "--json", env_extra=env).stdout)
    acts = [(a["ref"], a["action"]) for a in first["sources"][0]["actions"]]
    assert acts == [("branch:master", "build"), ("tag:v1.2.0", "build"),
                    ("tag:v1.1.0", "deferred"), ("tag:v1.0.0", "deferred")]
    assert first["ok"] is True

    second = json.loads(poller("once", "--config", str(cfg), "--json", env_extra=env).stdout)
    acts = [(a["ref"], a["action"]) for a in second["sources"][0]["actions"]]
    assert acts == [("branch:master", "up-to-date"), ("tag:v1.2.0", "up-to-date"),
                    ("tag:v1.1.0", "build"), ("tag:v1.0.0", "build")]
    assert registry.tags(REPO) == sorted(["1.0.0", "1.1.0", "1.2.0", "staging",
                                          f"sha-{git_repo.head()[:12]}"])
