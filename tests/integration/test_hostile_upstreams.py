"""The hostile-upstream suite: git smart-HTTP servers, ``git ls-remote`` remotes, a registry
front and GitHub/GitLab doubles that answer with oversized, endless, malformed and adversarial
data. One ``poller once`` pass over all of them at once: every hostile source fails on its
own (recorded in the store, named in ``status``), the healthy sources in the same pass are
built, nothing prints a traceback, and the poller's peak memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.doubles.git_http import GitHttpServer
from tests.doubles.github import DEFAULT_TOKEN as GH_TOKEN
from tests.doubles.gitlab import DEFAULT_TOKEN as GL_TOKEN
from tests.doubles.gitrepo import GitRepo, git
from tests.doubles.hostile import ADVERTISEMENT, RegistryFront, WireServer, advertisement, endless
from tests.integration.test_pipeline import ROOT, poller, write_config

pytestmark = pytest.mark.integration

#: Peak resident memory the poller may reach in the whole hostile pass. Its own baseline
#: (interpreter, docker SDK, python-gitlab, pydantic) is about 100 MB; the bodies it is sent
#: add up to gigabytes if read without bounds.
MAX_RSS_MB = 400
NON_UTF8_TAG = b"refs/tags/v1.0.0\xff\xfe"
ABSURD_TAG = b"refs/tags/v" + b"9" * 5000 + b".0.0"
FAKE_SHA = "1" * 40


def run_measured(args: list[str], env: dict, out, err) -> tuple[int, float]:
    """Run the poller to the end; return its exit code and its own peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, "-m", "poller", *args], cwd=ROOT, env=env,
                            stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def inject_refs(extra: list[bytes]):
    """A transform for :class:`GitHttpServer`: real advertisement plus ``extra`` refs."""
    def transform(path: str, body: bytes) -> bytes:
        if not path.endswith("/info/refs") or not body.endswith(b"0000"):
            return body
        head = body[:-4]
        lines = b"".join(b"%04x" % (len(r) + 4 + 41 + 1) + FAKE_SHA.encode() + b" " + r + b"\n"
                         for r in extra)
        return head + lines + b"0000"
    return transform


def many_refs(n: int):
    return ((FAKE_SHA, b"refs/tags/v%d.0.0" % i) for i in range(n))


def test_hostile_upstreams_fail_only_their_own_source_within_a_memory_bound(
        tmp_path, registry, docker_host, github_double, gitlab_double):
    # Healthy, over git ls-remote: a real repository that also carries a tag that is not UTF-8.
    plain = GitRepo(tmp_path / "plain", name="plain")
    plain_sha = plain.seed_scratch_app("plain\n")
    git("update-ref", NON_UTF8_TAG.decode("utf-8", "surrogateescape"), plain_sha, cwd=plain.bare)

    # Healthy, over smart HTTP: a real repository whose advertisement the server spikes with
    # a non-UTF-8 tag and a version of 5,000 digits.
    odd = GitRepo(tmp_path / "odd", name="odd")
    odd_sha = odd.seed_scratch_app("odd\n")
    odd_http = GitHttpServer(odd.root)
    odd_http.transform = inject_refs([NON_UTF8_TAG, ABSURD_TAG])

    # git ls-remote of 200,000 refs.
    huge = GitRepo(tmp_path / "huge", name="huge")
    huge_sha = huge.seed_scratch_app("huge\n")
    (huge.bare / "packed-refs").write_text(
        "# pack-refs with: peeled fully-peeled sorted \n"
        + "".join(f"{huge_sha} refs/tags/t{i:06d}\n" for i in range(200_000)))

    # Smart-HTTP servers that are not git servers at all.
    wire = WireServer()
    wire.answer(r"^/many\.git/info/refs$", lambda: advertisement(many_refs(200_000)),
                content_type=ADVERTISEMENT)
    wire.answer(r"^/endless\.git/info/refs$", lambda: endless(b"001e# service=git-upload-pack\n0000",
                                                              b"0040" + b"a" * 60),
                content_type=ADVERTISEMENT)
    wire.answer(r"^/garbage\.git/info/refs$", b"zzzz\xff\x00 not pkt-lines", content_type=ADVERTISEMENT)

    # GitHub: refs of the wrong JSON types, and a ref list that never ends.
    hosted = GitRepo(tmp_path / "hosted", name="hosted")
    hosted.seed_scratch_app("hosted\n")
    github_double.add_repo("games/wrong", hosted)
    github_double.add_repo("games/endless", hosted)
    github_double.answer(r"^/repos/games/wrong/git/matching-refs/tags$", b'[{"ref": 5, "object": "nope"}, 7]')
    github_double.answer(r"^/repos/games/endless/git/matching-refs/tags$",
                         lambda: endless(b"[", b'{"ref": "refs/tags/v1.0.0", "object": {}},'))
    # GitLab: a tag list that is an object, not a list, and one that never ends.
    gitlab_double.add_project("games/wrong", hosted)
    gitlab_double.add_project("games/endless", hosted)
    gitlab_double.answer(r"/games%2Fwrong/repository/tags$", b'{"name": {"deep": [1, 2]}, "commit": 5}')
    gitlab_double.answer(r"/games%2Fendless/repository/tags$",
                         lambda: endless(b"[", b'{"name": "v1.0.0", "commit": {"id": "x"}},'))

    # The registry, through a front that sends an endless manifest for one repository.
    front = RegistryFront(registry.url)
    front.answer(r"^/v2/hostile/manifests/", b"", method="HEAD",
                 headers={"Docker-Content-Digest": "sha256:" + "0" * 64},
                 content_type="application/vnd.docker.distribution.manifest.v2+json")
    front.answer(r"^/v2/hostile/manifests/", lambda: endless(b'{"config": {"digest": "', b"x"),
                 method="GET", content_type="application/vnd.docker.distribution.manifest.v2+json")

    def src(name: str, image: str | None = None, **kind) -> dict:
        # named on the front: images are pushed to and read from registry.url (the front passes
        # pushes through to the real registry)
        return {"name": name, "branch": "master", "image": f"{front.addr}/{image or name}", **kind}

    sources = [
        src("plain", git={"url": plain.url}),
        src("odd", git={"url": odd_http.repo_url("odd.git")}),
        src("huge-ls-remote", git={"url": huge.url}),
        src("many-refs", git={"url": f"{wire.url}/many.git"}),
        src("endless-refs", git={"url": f"{wire.url}/endless.git"}),
        src("garbage-refs", git={"url": f"{wire.url}/garbage.git"}),
        src("github-wrong", github={"repo": "games/wrong", "api_url": github_double.url,
                                    "token": GH_TOKEN}),
        src("github-endless", github={"repo": "games/endless", "api_url": github_double.url,
                                      "token": GH_TOKEN}),
        src("gitlab-wrong", gitlab={"url": gitlab_double.url, "project": "games/wrong",
                                    "token": GL_TOKEN}),
        src("gitlab-endless", gitlab={"url": gitlab_double.url, "project": "games/endless",
                                      "token": GL_TOKEN}),
        src("registry-endless", image="hostile", git={"url": plain.url}),
    ]
    cfg = write_config(tmp_path, {
        "registry": {"url": front.addr, "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")}, "state_dir": str(tmp_path / "state"),
        "api": {"listen": None}, "sources": sources})
    env = {**os.environ, "DOCKER_HOST": docker_host}
    try:
        with open(tmp_path / "out.json", "w") as out, open(tmp_path / "err.log", "w") as err:
            code, peak_mb = run_measured(["once", "--config", str(cfg), "--json"], env, out, err)
    finally:
        for server in (odd_http, wire, front):
            server.stop()
    stderr = (tmp_path / "err.log").read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == 1
    report = {s["source"]: s for s in json.loads((tmp_path / "out.json").read_text())["sources"]}

    # The healthy sources were built in the same pass; odd tags were ignored, not fatal.
    for name, sha in (("plain", plain_sha), ("odd", odd_sha)):
        assert report[name]["error"] is None, report[name]
        assert [(a["ref"], a["sha"], a["status"]) for a in report[name]["actions"]] == [
            ("branch:master", sha, "succeeded")], name
        assert registry.labels(name, "staging")["org.opencontainers.image.revision"] == sha

    # Every hostile source failed on its own, with an error that says what went wrong.
    expected = {
        "huge-ls-remote": "more than 50000 tags",
        "many-refs": "more than 100002 refs",
        "endless-refs": "larger than",
        "garbage-refs": "pkt-line",
        "github-wrong": "malformed",
        "github-endless": "larger than",
        "gitlab-wrong": "malformed",
        "gitlab-endless": "larger than",
        "registry-endless": "larger than",
    }
    for name, words in expected.items():
        assert report[name]["actions"] == [], name
        assert words in (report[name]["error"] or ""), (name, report[name]["error"])
        assert "internal error" not in report[name]["error"], name

    # The store recorded each failure on that source only.
    status = poller("status", "--config", str(cfg), "--json")
    assert status.returncode == 0, status.stderr
    seen = {s["name"]: s for s in json.loads(status.stdout)["sources"]}
    assert {n for n, s in seen.items() if s.get("last_error")} == set(expected)
    assert seen["plain"]["head"] == plain_sha and seen["odd"]["head"] == odd_sha

    assert peak_mb < MAX_RSS_MB, f"poller peaked at {peak_mb:.0f} MB"
