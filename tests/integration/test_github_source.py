"""GitHubSource against the GitHub double (real HTTP, real git)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from poller.config import SourceConfig
from poller.errors import AuthError, NotFound, SourceError, UpstreamError
from poller.sources.archive import strip_leading_dir
from poller.sources.base import Source
from poller.sources.github import GitHubSource
from tests.doubles.github import DEFAULT_TOKEN, GitHubDouble
from tests.doubles.gitrepo import GitRepo
from tests.fixtures.services import ROOT

pytestmark = pytest.mark.integration

REFS = "/repos/games/lobby/git/refs"
TAGS = "/repos/games/lobby/git/matching-refs/tags"
HEAD = "/repos/games/lobby/git/ref/heads/master"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path, name="lobby")


def make_source(double: GitHubDouble, *, token: str | None = DEFAULT_TOKEN,
                branch: str = "master") -> GitHubSource:
    cfg = SourceConfig(name="lobby", branch=branch, image="127.0.0.1:5000/lobby",
                       github={"repo": "games/lobby", "api_url": double.url, "token": token})
    return GitHubSource(cfg)


def api(double: GitHubDouble, path: str, **headers: str) -> requests.Response:
    return requests.get(f"{double.url}{path}", timeout=10,
                        headers={"Authorization": f"Bearer {DEFAULT_TOKEN}", **headers})


def tar_members(fileobj, mode: str = "r:") -> dict[str, tuple[int, bytes]]:
    with tarfile.open(fileobj=fileobj, mode=mode) as tar:
        return {m.name.rstrip("/"): (m.mode, tar.extractfile(m).read() if m.isreg() else b"")
                for m in tar.getmembers()}


# -- the double speaks GitHub -----------------------------------------------------------


def test_double_refs_are_paginated_conditional_and_rate_limited(github_double: GitHubDouble,
                                                               repo: GitRepo):
    sha = repo.commit("one")
    repo.tag("v1.0.0")
    repo.tag("latest", annotated=False)
    github_double.add_repo("games/lobby", repo)

    first = api(github_double, f"{REFS}?per_page=2")
    assert first.status_code == 200 and first.headers["ETag"].startswith('"')
    assert [r["ref"] for r in first.json()] == ["refs/heads/master", "refs/tags/latest"]
    second = requests.get(first.links["next"]["url"], timeout=10,
                          headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    [annotated] = second.json()
    assert annotated["ref"] == "refs/tags/v1.0.0" and annotated["object"]["type"] == "tag"
    assert "next" not in second.links

    remaining = int(second.headers["X-RateLimit-Remaining"])
    cached = api(github_double, f"{REFS}?per_page=2", **{"If-None-Match": first.headers["ETag"]})
    assert (cached.status_code, cached.content) == (304, b"")
    assert int(cached.headers["X-RateLimit-Remaining"]) == remaining

    tag = api(github_double, f"/repos/games/lobby/git/tags/{annotated['object']['sha']}").json()
    assert (tag["tag"], tag["object"]) == ("v1.0.0", {**tag["object"], "sha": sha, "type": "commit"})
    matching = api(github_double, "/repos/games/lobby/git/matching-refs/tags/v").json()
    assert [r["ref"] for r in matching] == ["refs/tags/v1.0.0"]

    tarball = api(github_double, f"/repos/games/lobby/tarball/{sha}")
    assert tarball.history[0].status_code == 302
    names = tar_members(io.BytesIO(tarball.content), "r:gz")
    assert all(n.startswith(f"games-lobby-{sha[:7]}") for n in names)


def test_double_errors_look_like_github(github_double: GitHubDouble, repo: GitRepo):
    github_double.add_repo("games/lobby", repo)
    empty = api(github_double, REFS)
    assert (empty.status_code, empty.json()["message"]) == (409, "Git Repository is empty.")
    bad = requests.get(f"{github_double.url}{REFS}", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert (bad.status_code, bad.json()["message"]) == (401, "Bad credentials")
    anonymous = requests.get(f"{github_double.url}{REFS}", timeout=10)
    assert (anonymous.status_code, anonymous.json()["message"]) == (404, "Not Found")
    github_double.exhaust_rate_limit()
    limited = api(github_double, REFS)
    assert limited.status_code == 403 and limited.headers["X-RateLimit-Remaining"] == "0"


# -- polling ----------------------------------------------------------------------------


def test_poll_sees_branch_head_and_all_tags_peeled(github_double: GitHubDouble, repo: GitRepo):
    first = repo.commit("one", {"app.txt": "1"})
    repo.tag("v1.2")                          # annotated
    head = repo.commit("two", {"app.txt": "2"})
    repo.tag("1.4.0-rc.1")
    repo.tag("latest", annotated=False)       # lightweight
    github_double.add_repo("games/lobby", repo)
    source = make_source(github_double)
    assert isinstance(source, Source)

    snap = source.poll()

    assert (snap.branch, snap.head, snap.unchanged) == ("master", head, False)
    assert snap.tags == {"v1.2": first, "1.4.0-rc.1": head, "latest": head}


def test_unchanged_poll_is_two_304s_that_cost_no_rate_limit(github_double: GitHubDouble, repo: GitRepo):
    repo.commit("one")
    repo.tag("v1.0.0")
    github_double.add_repo("games/lobby", repo)
    source = make_source(github_double)
    first = source.poll()
    remaining = github_double.rate_limit_remaining
    github_double.requests.clear()

    again = source.poll()

    assert github_double.requests == [("GET", TAGS), ("GET", HEAD)]
    assert github_double.rate_limit_remaining == remaining
    assert again.unchanged and (again.head, again.tags) == (first.head, first.tags)


def test_push_is_seen_and_tags_are_peeled_only_once(github_double: GitHubDouble, repo: GitRepo):
    repo.commit("one")
    repo.tag("v1.0.0")
    github_double.add_repo("games/lobby", repo)
    source = make_source(github_double)
    source.poll()

    pushed = repo.commit("two")
    repo.tag("v2.0.0")
    snap = source.poll()

    assert (snap.head, snap.unchanged, snap.tags["v2.0.0"]) == (pushed, False, pushed)
    peels = [p for _, p in github_double.requests if "/git/tags/" in p]
    assert len(peels) == len(set(peels)) == 2


def test_refs_beyond_the_first_page_are_read_and_watched(github_double: GitHubDouble, repo: GitRepo):
    sha = repo.commit("one")
    for i in range(110):
        subprocess.run(["git", "tag", f"v0.0.{i:03d}", sha], cwd=repo.bare, check=True)
    github_double.add_repo("games/lobby", repo)
    source = make_source(github_double)
    assert len(source.poll().tags) == 110

    assert source.poll().unchanged                       # 304s only
    subprocess.run(["git", "tag", "zz-last", sha], cwd=repo.bare, check=True)   # sorts onto page 2
    snap = source.poll()

    assert not snap.unchanged and snap.tags["zz-last"] == sha


def test_missing_branch_gives_no_head(github_double: GitHubDouble, repo: GitRepo):
    sha = repo.commit("one")
    repo.tag("v1.0.0", annotated=False)
    github_double.add_repo("games/lobby", repo)

    snap = make_source(github_double, branch="release").poll()

    assert (snap.head, snap.tags) == (None, {"v1.0.0": sha})


def test_empty_repository_has_no_head_and_no_tags(github_double: GitHubDouble, repo: GitRepo):
    github_double.add_repo("games/lobby", repo)
    snap = make_source(github_double).poll()
    assert (snap.head, snap.tags) == (None, {})


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503])
def test_rate_limits_and_server_errors_surface_at_once(github_double: GitHubDouble, repo: GitRepo,
                                                       status: int):
    repo.commit("one")
    github_double.add_repo("games/lobby", repo)
    github_double.fail_next(1, status=status, retry_after=30)

    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        make_source(github_double).poll()

    assert time.monotonic() - started < 2
    assert (err.value.status, err.value.retry_after) == (status, 30)


def test_exhausted_rate_limit_is_temporary_with_the_reset_time(github_double: GitHubDouble, repo: GitRepo):
    repo.commit("one")
    github_double.add_repo("games/lobby", repo)
    github_double.exhaust_rate_limit(reset_in=120)

    with pytest.raises(UpstreamError) as err:
        make_source(github_double).poll()

    assert err.value.status == 403 and 100 < err.value.retry_after <= 120


def test_failed_peel_does_not_leave_a_stale_cache(github_double: GitHubDouble, repo: GitRepo):
    repo.commit("one")
    github_double.add_repo("games/lobby", repo)
    source = make_source(github_double)
    source.poll()
    tagged = repo.commit("two")
    repo.tag("v2.0.0")
    github_double.fail_next(1, status=503, path="/git/tags/")

    with pytest.raises(UpstreamError):
        source.poll()
    snap = source.poll()

    assert (snap.unchanged, snap.tags) == (False, {"v2.0.0": tagged})


def test_bad_token_is_an_auth_error_that_never_shows_the_token(github_double: GitHubDouble, repo: GitRepo):
    repo.commit("one")
    github_double.add_repo("games/lobby", repo)
    secret = "ghp_doNotPrintMe"
    source = make_source(github_double, token=secret)

    with pytest.raises(AuthError) as err:
        source.poll()

    for text in (str(err.value), repr(err.value), repr(source), source.web_url()):
        assert secret not in text


def test_unknown_repository_is_not_found(github_double: GitHubDouble):
    with pytest.raises(NotFound):
        make_source(github_double).poll()


def test_connection_refused_is_temporary(github_double: GitHubDouble):
    source = make_source(github_double)
    github_double.stop()
    with pytest.raises(UpstreamError) as err:
        source.poll()
    assert isinstance(err.value.__cause__, requests.ConnectionError)


# -- archives ---------------------------------------------------------------------------


def test_write_archive_is_repo_relative_and_matches_git_archive(github_double: GitHubDouble,
                                                                 repo: GitRepo):
    repo.write("run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    old = repo.commit("one", {"app.txt": "v1\n", "assets/map.bin": bytes(range(256))})
    repo.commit("two", {"app.txt": "v2\n"})
    github_double.add_repo("games/lobby", repo)
    out = io.BytesIO()

    make_source(github_double).write_archive(old, out)

    out.seek(0)
    expected = subprocess.run(["git", "archive", "--format=tar", old], cwd=repo.bare,
                              capture_output=True, check=True).stdout
    assert tar_members(out) == tar_members(io.BytesIO(expected))
    assert ("GET", f"/repos/games/lobby/tarball/{old}") in github_double.requests


def test_web_url(github_double: GitHubDouble):
    def url(api_url: str) -> str:
        cfg = SourceConfig(name="lobby", branch="master", image="127.0.0.1:5000/lobby",
                           github={"repo": "games/lobby", "api_url": api_url})
        return GitHubSource(cfg).web_url()

    assert url("https://api.github.com") == "https://github.com/games/lobby"
    assert url("https://ghe.example.com/api/v3/") == "https://ghe.example.com/games/lobby"
    assert url("https://user:pw@ghe.example.com/api/v3") == "https://ghe.example.com/games/lobby"


def test_write_archive_of_unknown_commit_is_not_found(github_double: GitHubDouble, repo: GitRepo):
    repo.commit("one")
    github_double.add_repo("games/lobby", repo)
    with pytest.raises(NotFound):
        make_source(github_double).write_archive("0" * 40, io.BytesIO())


def test_archives_that_escape_the_tree_are_refused():
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w:gz") as tar:
        for name in ("top", "top/../../etc/passwd"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name == "top" else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)
    hostile.seek(0)
    with pytest.raises(SourceError, match="escapes"):
        strip_leading_dir(hostile, io.BytesIO(), "gz")


# -- GitHub as it really behaves ----------------------------------------------------------


def test_poll_reads_heads_and_tags_only_and_stays_cheap_with_many_pull_requests(
        github_double: GitHubDouble, repo: GitRepo):
    """``refs/pull/*`` (two per pull request) are never listed; ``matching-refs`` answering
    everything at once (ignoring ``per_page``) or in pages, the poll is right either way."""
    sha = repo.commit("one")
    for i in range(120):
        subprocess.run(["git", "tag", f"v0.0.{i:03d}", sha], cwd=repo.bare, check=True)
    for n in range(1, 301):
        for kind in ("head", "merge"):
            subprocess.run(["git", "update-ref", f"refs/pull/{n}/{kind}", sha], cwd=repo.bare, check=True)
    github_double.add_repo("games/lobby", repo)
    assert "next" in api(github_double, f"{REFS}?per_page=100").links   # git/refs: 8 pages
    github_double.requests.clear()

    source = make_source(github_double)
    snap = source.poll()
    assert snap.head == sha and set(snap.tags) == {f"v0.0.{i:03d}" for i in range(120)}
    assert [p for _, p in github_double.requests if "/git/" in p] == [TAGS, HEAD]
    github_double.requests.clear()
    assert source.poll().unchanged and github_double.requests == [("GET", TAGS), ("GET", HEAD)]

    # the same with matching-refs paginating after all: every page read, then 304s
    github_double.matching_refs_page_size = 50
    paged = make_source(github_double)
    github_double.requests.clear()
    assert paged.poll().tags == snap.tags
    assert [p for _, p in github_double.requests].count(TAGS) == 3
    subprocess.run(["git", "tag", "zz-last", sha], cwd=repo.bare, check=True)   # lands on page 3
    assert paged.poll().tags["zz-last"] == sha


def test_unauthenticated_304s_spend_the_rate_limit_and_config_load_warns(
        github_double: GitHubDouble, repo: GitRepo, tmp_path: Path):
    repo.commit("one")
    github_double.token = None                  # a public repository, polled without a token
    github_double.add_repo("games/lobby", repo, private=False)
    source = make_source(github_double, token=None)
    source.poll()
    before = github_double.anonymous_remaining
    assert source.poll().unchanged
    assert github_double.anonymous_remaining == before - 2     # two 304s, both counted

    cfg = tmp_path / "slipway.yaml"
    cfg.write_text(f"""registry: {{url: "127.0.0.1:5000"}}
sources:
  - name: lobby
    github: {{repo: "games/lobby", api_url: "{github_double.url}"}}
    branch: master
    image: 127.0.0.1:5000/lobby
""")
    res = subprocess.run([sys.executable, "-m", "poller", "check-config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "config.github_unauthenticated" in res.stderr and "sources[0].github.token" in res.stderr
    assert "120 per hour" in res.stderr


@pytest.mark.parametrize("status", [403, 429])
def test_secondary_rate_limit_waits_a_minute_and_is_not_bad_credentials(github_double: GitHubDouble,
                                                                        repo: GitRepo, status: int):
    repo.commit("one")
    github_double.add_repo("games/lobby", repo)
    github_double.fail_next(1, status=status)           # no Retry-After, quota left

    raw = api(github_double, TAGS)
    assert raw.status_code == status and raw.headers["X-RateLimit-Remaining"] not in ("", "0")
    assert "secondary rate limit" in raw.json()["message"]
    github_double.fail_next(1, status=status)
    with pytest.raises(UpstreamError) as err:
        make_source(github_double).poll()

    assert not isinstance(err.value, AuthError)
    assert err.value.status == status and err.value.retry_after >= 60


def test_token_is_never_sent_to_a_host_a_next_link_names(github_double: GitHubDouble, repo: GitRepo):
    sha = repo.commit("one")
    for i in range(5):
        subprocess.run(["git", "tag", f"v0.0.{i}", sha], cwd=repo.bare, check=True)
    github_double.add_repo("games/lobby", repo)
    elsewhere = GitHubDouble(token=None)
    try:
        github_double.matching_refs_page_size = 2
        github_double.link_base = elsewhere.url.replace("127.0.0.1", "localhost")
        with pytest.raises(SourceError, match="another host"):
            make_source(github_double).poll()
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()
