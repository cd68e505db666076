"""The whole pipeline from hosted sources: GitLab (python-gitlab against the REST double) and
GitHub (REST double), both backed by real git repositories, building with the real dockerd
and pushing to the real registry."""

from __future__ import annotations

import json

import pytest

from poller.http import RequestCounter
from tests.doubles.github import DEFAULT_TOKEN as GH_TOKEN
from tests.doubles.gitlab import DEFAULT_TOKEN as GL_TOKEN
from tests.integration.test_pipeline import pipeline_for, poller, write_config

pytestmark = pytest.mark.integration


def base(tmp_path, registry, sources):
    return {"registry": {"url": registry.addr, "insecure": True},
            "store": {"path": str(tmp_path / "slipway.db")}, "state_dir": str(tmp_path / "state"),
            "api": {"listen": None}, "sources": sources}


def test_gitlab_merge_and_tag_through_python_gitlab(tmp_path, registry, git_repo, gitlab_double, docker_host):
    first = git_repo.seed_scratch_app("lobby v1\n")
    gitlab_double.add_project("games/lobby", git_repo)
    git_repo.tag("v1.0.0")
    data = base(tmp_path, registry, [{
        "name": "lobby", "branch": "master", "image": f"{registry.addr}/lobby",
        "gitlab": {"url": gitlab_double.url, "project": "games/lobby", "token": "${GITLAB_TOKEN}"}}])
    cfg = write_config(tmp_path, data)
    res = poller("once", "--config", str(cfg), "--json",
                 env_extra={"DOCKER_HOST": docker_host, "GITLAB_TOKEN": GL_TOKEN})
    assert res.returncode == 0, res.stderr
    assert GL_TOKEN not in res.stdout + res.stderr
    actions = {a["ref"]: a["status"] for a in json.loads(res.stdout)["sources"][0]["actions"]}
    assert actions == {"branch:master": "succeeded", "tag:v1.0.0": "succeeded"}
    assert registry.labels("lobby", "1.0.0")["org.opencontainers.image.revision"] == first

    # In the long-running loop an unchanged GitLab project costs one events request.
    counter = RequestCounter()
    src = data["sources"][0]
    inline = {**data, "sources": [{**src, "gitlab": {**src["gitlab"], "token": GL_TOKEN}}]}
    pipeline = pipeline_for(inline, docker_host, counter=counter)
    try:
        pipeline.reconcile_source("lobby")
        pipeline.reconcile_source("lobby")      # converged now
        before = gitlab_double.request_count()
        counter.reset()
        report = pipeline.reconcile_source("lobby")
        assert report.skipped_registry
        assert gitlab_double.request_count() - before == 1 and counter.total() == 1

        second = git_repo.commit("merge", {"app.txt": "lobby v2\n"})
        report = pipeline.reconcile_source("lobby")
        pipeline.wait_for_builds()
        assert [(a.ref, a.status) for a in report.actions if a.action == "build"] == [
            ("branch:master", "succeeded")]
    finally:
        pipeline.shutdown()
    assert registry.labels("lobby", "staging")["org.opencontainers.image.revision"] == second


def test_github_source_builds_from_the_tarball(tmp_path, registry, git_repo, github_double, docker_host):
    sha = git_repo.seed_scratch_app("mm v1\n")
    github_double.add_repo("studio/matchmaker", git_repo)
    data = base(tmp_path, registry, [{
        "name": "matchmaker", "branch": "master", "image": f"{registry.addr}/matchmaker",
        "github": {"repo": "studio/matchmaker", "api_url": github_double.url, "token": GH_TOKEN}}])
    pipeline = pipeline_for(data, docker_host)
    try:
        reports = pipeline.run_once()
    finally:
        pipeline.shutdown()
    assert [(a.ref, a.status) for a in reports[0].actions] == [("branch:master", "succeeded")]
    assert registry.labels("matchmaker", "staging")["org.opencontainers.image.revision"] == sha
