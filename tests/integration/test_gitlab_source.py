"""GitLabSource through python-gitlab against the GitLab double (real HTTP, real git)."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import gitlab
import pytest
import requests

from poller.config import SourceConfig
from poller.errors import AuthError, NotFound, UpstreamError
from poller.http import RequestCounter, make_session
from poller.sources.base import Source
from poller.sources.gitlab import GitLabSource
from tests.doubles.gitlab import DEFAULT_TOKEN, GitLabDouble
from tests.doubles.gitrepo import GitRepo

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path, name="lobby")


def make_source(double: GitLabDouble, *, project: str = "games/lobby", token: str | None = DEFAULT_TOKEN,
                branch: str = "master", counter: RequestCounter | None = None) -> GitLabSource:
    cfg = SourceConfig(name="lobby", branch=branch, image="127.0.0.1:5000/lobby",
                       gitlab={"url": double.url, "project": project, "token": token})
    session = make_session("gitlab:test", counter=counter) if counter else None
    return GitLabSource(cfg, session=session)


def git_archive_members(repo: GitRepo, sha: str) -> dict[str, tuple[int, bytes]]:
    data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=repo.bare,
                          capture_output=True, check=True).stdout
    return tar_members(io.BytesIO(data))


def tar_members(fileobj) -> dict[str, tuple[int, bytes]]:
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        return {m.name.rstrip("/"): (m.mode, tar.extractfile(m).read() if m.isreg() else b"")
                for m in tar.getmembers()}


# -- the double speaks GitLab to python-gitlab ---------------------------------------------


def test_double_serves_every_endpoint_python_gitlab_uses(gitlab_double: GitLabDouble, repo: GitRepo):
    first = repo.commit("one", {"a.txt": "a"})
    repo.tag("v1.0.0")
    second = repo.commit("two", {"b.txt": "b"})
    for name in ("latest", "v1.2", "1.4.0-rc.1"):
        repo.tag(name, annotated=False)
    pid = gitlab_double.add_project("games/lobby", repo)
    gl = gitlab.Gitlab(gitlab_double.url, private_token=DEFAULT_TOKEN)

    by_path = gl.projects.get("games/lobby")
    assert (by_path.id, by_path.path_with_namespace, by_path.default_branch) == (pid, "games/lobby", "master")
    project = gl.projects.get(pid)
    assert project.web_url == f"{gitlab_double.url}/games/lobby"
    assert ("GET", "/api/v4/projects/games%2Flobby") in gitlab_double.requests

    assert [b.name for b in project.branches.list(get_all=True)] == ["master"]
    assert project.branches.get("master").commit["id"] == second

    pages = project.tags.list(iterator=True, per_page=2)
    assert (pages.total, pages.total_pages, pages.per_page) == (4, 2, 2)
    tags = {t.name: t for t in pages}
    assert set(tags) == {"v1.0.0", "latest", "v1.2", "1.4.0-rc.1"}
    assert tags["v1.0.0"].commit["id"] == first and tags["v1.0.0"].target != first
    assert tags["v1.0.0"].message == "release v1.0.0"
    assert tags["latest"].target == tags["latest"].commit["id"] == second
    assert project.tags.get("v1.2").commit["id"] == second

    commit = project.commits.get(first)
    assert (commit.id, commit.title, commit.parent_ids) == (first, "one", [])

    events = project.events.list(get_all=True)
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert all(e.action_name == "pushed new" for e in events)
    master = next(e for e in events if e.push_data["ref"] == "master")
    assert master.push_data["ref_type"] == "branch" and master.push_data["commit_to"] == second

    repo.commit("three")
    newest = project.events.list(page=1, per_page=1, get_all=False)[0]
    assert newest.action_name == "pushed to" and newest.id > events[0].id
    assert newest.push_data["commit_from"] == second and newest.push_data["commit_count"] == 1

    for fmt, mode in (("tar", "r:"), ("tar.gz", "r:gz")):
        data = project.repository_archive(sha=first, format=fmt)
        with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
            assert sorted(tar.getnames()) == [f"lobby-{first}-{first}", f"lobby-{first}-{first}/a.txt"]


def test_double_errors_look_like_gitlab(gitlab_double: GitLabDouble, repo: GitRepo):
    repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    gl = gitlab.Gitlab(gitlab_double.url, private_token=DEFAULT_TOKEN)

    with pytest.raises(gitlab.GitlabGetError) as missing:
        gl.projects.get("games/nope")
    assert (missing.value.response_code, missing.value.error_message) == (404, "404 Project Not Found")
    with pytest.raises(gitlab.GitlabGetError) as branch:
        gl.projects.get("games/lobby", lazy=True).branches.get("nope")
    assert branch.value.error_message == "404 Branch Not Found"
    with pytest.raises(gitlab.GitlabAuthenticationError) as denied:
        gitlab.Gitlab(gitlab_double.url, private_token="wrong").projects.get("games/lobby")
    assert denied.value.error_message == "401 Unauthorized"
    bearer = requests.get(f"{gitlab_double.url}/api/v4/projects/1",
                          headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}, timeout=10)
    assert bearer.status_code == 200
    anonymous = requests.get(f"{gitlab_double.url}/api/v4/projects/1", timeout=10)
    assert (anonymous.status_code, anonymous.json()) == (404, {"message": "404 Project Not Found"})


# -- polling ----------------------------------------------------------------------------


def test_poll_sees_branch_head_and_all_tags_peeled(gitlab_double: GitLabDouble, repo: GitRepo):
    first = repo.commit("one", {"app.txt": "1"})
    repo.tag("v1.2")                         # annotated
    head = repo.commit("two", {"app.txt": "2"})
    repo.tag("1.4.0-rc.1")
    repo.tag("latest", annotated=False)      # lightweight
    gitlab_double.add_project("games/lobby", repo)
    source = make_source(gitlab_double)
    assert isinstance(source, Source)

    snap = source.poll()

    assert (snap.branch, snap.head, snap.unchanged) == ("master", head, False)
    assert snap.tags == {"v1.2": first, "1.4.0-rc.1": head, "latest": head}


def test_many_tags_are_read_across_pages(gitlab_double: GitLabDouble, repo: GitRepo):
    sha = repo.commit("one")
    for i in range(105):
        subprocess.run(["git", "tag", f"v0.0.{i}", sha], cwd=repo.bare, check=True)
    gitlab_double.add_project("games/lobby", repo)

    snap = make_source(gitlab_double).poll()

    assert len(snap.tags) == 105 and set(snap.tags.values()) == {sha}
    assert gitlab_double.requests.count(("GET", "/api/v4/projects/games%2Flobby/repository/tags")) == 2


def test_unchanged_poll_costs_exactly_one_request(gitlab_double: GitLabDouble, repo: GitRepo):
    repo.commit("one")
    repo.tag("v1.0.0")
    gitlab_double.add_project("games/lobby", repo)
    counter = RequestCounter()
    source = make_source(gitlab_double, counter=counter)
    first = source.poll()
    gitlab_double.requests.clear()
    counter.reset()

    again = source.poll()

    assert gitlab_double.requests == [("GET", "/api/v4/projects/games%2Flobby/events")]
    assert counter.total() == 1
    assert again.unchanged and (again.head, again.tags) == (first.head, first.tags)


def test_new_push_and_new_tag_are_seen_on_the_next_poll(gitlab_double: GitLabDouble, repo: GitRepo):
    repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    source = make_source(gitlab_double)
    source.poll()

    pushed = repo.commit("two")
    after_push = source.poll()
    repo.tag("v2.0.0")
    after_tag = source.poll()

    assert (after_push.head, after_push.unchanged) == (pushed, False)
    assert (after_tag.tags, after_tag.unchanged) == ({"v2.0.0": pushed}, False)
    assert source.poll().unchanged


def test_missing_branch_gives_no_head(gitlab_double: GitLabDouble, repo: GitRepo):
    sha = repo.commit("one")
    repo.tag("v1.0.0", annotated=False)
    gitlab_double.add_project("games/lobby", repo)

    snap = make_source(gitlab_double, branch="release").poll()

    assert (snap.head, snap.tags) == (None, {"v1.0.0": sha})


def test_numeric_project_id(gitlab_double: GitLabDouble, repo: GitRepo):
    sha = repo.commit("one")
    pid = gitlab_double.add_project("games/lobby", repo)
    source = make_source(gitlab_double, project=str(pid))

    assert source.poll().head == sha
    assert source.web_url() == f"{gitlab_double.url}/projects/{pid}"


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_rate_limits_and_server_errors_surface_at_once(gitlab_double: GitLabDouble, repo: GitRepo,
                                                       status: int):
    repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    source = make_source(gitlab_double)
    gitlab_double.fail_next(1, status=status, retry_after=30)

    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        source.poll()

    assert time.monotonic() - started < 2
    assert (err.value.status, err.value.retry_after) == (status, 30)
    assert len(gitlab_double.requests) == 1
    assert isinstance(err.value.__cause__, gitlab.GitlabError)


def test_server_error_without_retry_after_midway_then_recovers(gitlab_double: GitLabDouble, repo: GitRepo):
    sha = repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    source = make_source(gitlab_double)
    gitlab_double.fail_next(1, status=503, path="/repository/tags")

    with pytest.raises(UpstreamError) as err:
        source.poll()
    assert (err.value.status, err.value.retry_after) == (503, None)

    snap = source.poll()   # the failed poll did not record the event id
    assert (snap.head, snap.unchanged) == (sha, False)


def test_connection_refused_is_temporary(gitlab_double: GitLabDouble, repo: GitRepo):
    repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    source = make_source(gitlab_double)
    gitlab_double.stop()

    with pytest.raises(UpstreamError) as err:
        source.poll()
    assert isinstance(err.value.__cause__, requests.ConnectionError)


def test_bad_token_is_an_auth_error_that_never_shows_the_token(gitlab_double: GitLabDouble, repo: GitRepo):
    repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    secret = "glpat-do-not-print-me"
    source = make_source(gitlab_double, token=secret)

    with pytest.raises(AuthError) as err:
        source.poll()

    assert isinstance(err.value.__cause__, gitlab.GitlabAuthenticationError)
    for text in (str(err.value), repr(err.value), repr(source), source.web_url()):
        assert secret not in text


def test_unknown_project_is_not_found(gitlab_double: GitLabDouble):
    with pytest.raises(NotFound, match="404 Project Not Found"):
        make_source(gitlab_double, project="games/ghost").poll()


# -- archives ---------------------------------------------------------------------------


def test_write_archive_is_repo_relative_and_matches_git_archive(gitlab_double: GitLabDouble,
                                                                 repo: GitRepo):
    repo.write("run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    old = repo.commit("one", {"app.txt": "v1\n", "assets/map.bin": bytes(range(256))})
    repo.commit("two", {"app.txt": "v2\n"})   # the branch moves on; the archive must not
    gitlab_double.add_project("games/lobby", repo)
    out = io.BytesIO()

    make_source(gitlab_double).write_archive(old, out)

    out.seek(0)
    members = tar_members(out)
    assert members == git_archive_members(repo, old)
    assert members["app.txt"][1] == b"v1\n" and members["run.sh"][0] & 0o111
    assert any(p == ("GET", "/api/v4/projects/games%2Flobby/repository/archive.tar")
               for p in gitlab_double.requests)


def test_write_archive_of_unknown_commit_is_not_found(gitlab_double: GitLabDouble, repo: GitRepo):
    repo.commit("one")
    gitlab_double.add_project("games/lobby", repo)
    with pytest.raises(NotFound):
        make_source(gitlab_double).write_archive("0" * 40, io.BytesIO())


def test_web_url_has_no_credentials(gitlab_double: GitLabDouble):
    cfg = SourceConfig(name="lobby", branch="master", image="127.0.0.1:5000/lobby",
                       gitlab={"url": "https://bot:pw@gitlab.example.com/", "project": "games/lobby",
                               "token": "glpat-secret"})
    assert GitLabSource(cfg).web_url() == "https://gitlab.example.com/games/lobby"
