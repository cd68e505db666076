"""Plain git remotes: file:// through git ls-remote, http(s) through one smart-HTTP request."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from poller.config import SourceConfig
from poller.errors import AuthError, SourceError, UpstreamError
from poller.http import RequestCounter
from poller.sources.git import GitSource
from tests.doubles.git_http import GitHttpServer
from tests.doubles.gitrepo import GitRepo, git

pytestmark = pytest.mark.integration


def source(url, tmp_path, counter=None, branch="master"):
    cfg = SourceConfig(name="gs", git={"url": url}, branch=branch, image="r:5000/gs")
    return GitSource(cfg, cache_dir=tmp_path / "cache", counter=counter)


@pytest.fixture
def repo(tmp_path):
    r = GitRepo(tmp_path / "repos", name="gs")
    return r


@pytest.fixture
def http_server(repo):
    srv = GitHttpServer(repo.root)
    yield srv
    srv.stop()


def expected_refs(repo):
    out = git("ls-remote", "--heads", "--tags", str(repo.bare))
    return out


def test_file_remote_peels_annotated_tags(repo, tmp_path):
    a = repo.commit("a")
    repo.tag("v1.0.0")              # annotated
    repo.tag("light", annotated=False)
    snap = source(repo.url, tmp_path).poll()
    assert snap.head == a and snap.tags == {"v1.0.0": a, "light": a}


def test_http_remote_is_one_request_and_matches_ls_remote(repo, http_server, tmp_path):
    a = repo.commit("a")
    repo.tag("v1.0.0")
    b = repo.commit("b")
    repo.tag("v1.1.0-rc.1", annotated=False)
    counter = RequestCounter()
    src = source(http_server.repo_url("gs.git"), tmp_path, counter=counter)
    snap = src.poll()
    assert counter.total() == 1 and len(http_server.requests) == 1
    assert snap.head == b and snap.tags == {"v1.0.0": a, "v1.1.0-rc.1": b}
    file_snap = source(repo.url, tmp_path).poll()
    assert file_snap == snap


def test_http_archive_of_exact_commit(repo, http_server, tmp_path):
    a = repo.commit("a", {"f.txt": "one"})
    repo.commit("b", {"f.txt": "two"})
    src = source(http_server.repo_url("gs.git"), tmp_path)
    buf = io.BytesIO()
    src.write_archive(a, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        assert t.extractfile("f.txt").read() == b"one"


def test_http_remote_with_credentials_never_leaks_them(repo, tmp_path):
    srv = GitHttpServer(repo.root, auth="ci:hunter2-secret")
    try:
        repo.commit("a")
        good = source(srv.repo_url("gs.git", credentials="ci:hunter2-secret"), tmp_path)
        assert good.poll().head == repo.head()
        assert "hunter2" not in good.web_url()
        bad = source(srv.repo_url("gs.git", credentials="ci:wrong"), tmp_path)
        with pytest.raises(AuthError) as exc:
            bad.poll()
        assert "wrong" not in str(exc.value)
    finally:
        srv.stop()


def test_http_503_with_retry_after_is_temporary_and_fast(repo, http_server, tmp_path):
    repo.commit("a")
    http_server.fail_next(1, status=503, retry_after=30)
    src = source(http_server.repo_url("gs.git"), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(UpstreamError) as exc:
        src.poll()
    assert time.monotonic() - t0 < 2 and exc.value.retry_after == 30
    assert src.poll().head == repo.head()


def test_unknown_repository_is_a_clear_error(tmp_path, http_server):
    with pytest.raises(SourceError):
        source(f"file://{tmp_path}/missing.git", tmp_path).poll()
    with pytest.raises(Exception) as exc:
        source(http_server.repo_url("missing.git"), tmp_path).poll()
    assert "404" in str(exc.value)


def test_a_git_failure_keeps_the_fatal_line_not_just_the_advice(tmp_path):
    missing = tmp_path / "nowhere.git"
    with pytest.raises(SourceError) as exc:
        source(f"file://{missing}", tmp_path).poll()
    message = str(exc.value)
    assert "does not appear to be a git repository" in message, message
    assert "the repository exists" in message and "\n" not in message


def test_a_git_failure_message_is_bounded_and_masks_the_remote_credentials(repo, tmp_path):
    long_path = "x" * 5000
    url = f"http://ci:hunter2-secret@127.0.0.1:9/{long_path}.git"
    src = source(url, tmp_path)
    with pytest.raises((SourceError, UpstreamError)) as exc:
        src.write_archive("0" * 40, io.BytesIO())
    message = str(exc.value)
    said = message.split(" failed: ", 1)[1]
    assert "hunter2" not in message and len(said) <= 2100 and "…" in said, said[:300]
