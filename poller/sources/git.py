"""Any git remote, read with ``git ls-remote`` (one round trip returns every ref).

Builds read the exact commit from a local mirror (``git fetch <url> <sha>`` then
``git archive <sha>``), never whatever the branch points to by the time the build starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import requests

from poller.config import SourceConfig
from poller.errors import NotFound, ResponseTooLarge, SourceError, UpstreamError
from poller.http import MAX_BODY, RequestCounter, make_session, redact_url
from poller.names import check_commit, check_git_ref
from poller.sources.base import MAX_REFS, RefSnapshot
from poller.sources.smart_http import advertised_refs

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

#: git errors that mean "try again later" rather than "this will never work".
_TRANSIENT = ("Could not resolve host", "Connection refused", "Connection timed out",
              "timed out", "The remote end hung up", "early EOF", "HTTP 5", "error: 5",
              "returned error: 5", "returned error: 429", "Temporary failure")

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "LC_ALL": "C"}


#: Longest git stderr kept in an error (head and tail of anything longer).
_STDERR_LIMIT = 2000


def _stderr_text(err: str) -> str:
    """All of git's stderr on one line (the ``fatal:`` line explains, the last one only advises),
    bounded."""
    text = " / ".join(line.strip() for line in err.splitlines() if line.strip())
    if len(text) > _STDERR_LIMIT:
        text = f"{text[:_STDERR_LIMIT * 3 // 4]} … {text[-_STDERR_LIMIT // 4:]}"
    return text


def parse_ls_remote(output: str, branch: str, *, upstream: str = "git") -> RefSnapshot:
    """Turn ``git ls-remote`` output into a snapshot; annotated tags are peeled.

    Lines that are not ``<hex sha>\t<ref>``, and refs whose names were not UTF-8 (decoded
    with U+FFFD), are dropped: they can be neither the watched branch nor a version. More
    than :data:`MAX_REFS` tags is the source's failure (:class:`ResponseTooLarge`).
    """
    head = None
    tags: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, ref = line.partition("\t")
        if not ref or not _SHA.fullmatch(sha) or "\ufffd" in ref:
            continue
        if ref == f"refs/heads/{branch}":
            head = sha
        elif ref.startswith("refs/tags/"):
            name = ref[len("refs/tags/"):]
            if name.endswith("^{}"):
                peeled[name[:-3]] = sha
            else:
                tags[name] = sha
            if len(tags) > MAX_REFS or len(peeled) > MAX_REFS:
                raise ResponseTooLarge(f"{upstream}: more than {MAX_REFS} tags", upstream=upstream)
    tags.update(peeled)
    return RefSnapshot(branch=branch, head=head, tags=tags)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released when the holder exits, even by SIGKILL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _TooMuchOutput(Exception):
    pass


def _run_bounded(argv: list[str], *, cwd: Path | None, env: dict, timeout: float,
                 limit: int) -> subprocess.CompletedProcess:
    """``subprocess.run`` that keeps at most ``limit`` bytes of stdout (killing the process
    past that) and stops it after ``timeout`` seconds. stderr goes through a temporary file."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        started = time.monotonic()
        out = bytearray()
        try:
            stdout = proc.stdout
            assert stdout is not None
            for chunk in iter(lambda: stdout.read(1 << 16), b""):
                out += chunk
                if len(out) > limit:
                    raise _TooMuchOutput()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if time.monotonic() - started >= timeout and proc.returncode < 0:
            raise subprocess.TimeoutExpired(argv, timeout)
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - 64 * 1024))  # the end of what git said is what matters
        return subprocess.CompletedProcess(argv, proc.returncode, bytes(out), err.read())


class GitSource:
    """A source backed by a plain git remote (file://, https://, ssh://, git://)."""

    kind = "git"

    def __init__(self, cfg: SourceConfig, *, cache_dir: Path, timeout: float = 60.0,
                 session: requests.Session | None = None, counter: RequestCounter | None = None):
        assert cfg.git is not None
        self.name = cfg.name
        self.branch = cfg.branch
        self.url = cfg.git.url
        self.timeout = timeout
        key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.mirror = Path(cache_dir) / "git" / f"{cfg.name}-{key}.git"
        self._fetch_lock = threading.Lock()
        self._http = self.url.startswith(("http://", "https://"))
        host = self.url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        self.upstream = f"git:{host}"
        self._session = session or (make_session(self.upstream, counter=counter) if self._http else None)

    def web_url(self) -> str:
        return redact_url(self.url)

    def _git(self, *args: str, cwd: Path | None = None, stdout=subprocess.PIPE,
             limit: int | None = None) -> subprocess.CompletedProcess:
        """Run git; with ``limit``, more than that many bytes of output is :class:`ResponseTooLarge`."""
        env = {**os.environ, **_GIT_ENV}
        try:
            if limit is None:
                res = subprocess.run(["git", *args], cwd=cwd, env=env, stdout=stdout, check=False,
                                     stderr=subprocess.PIPE, timeout=self.timeout)
            else:
                res = _run_bounded(["git", *args], cwd=cwd, env=env, timeout=self.timeout,
                                   limit=limit)
        except subprocess.TimeoutExpired as exc:
            raise UpstreamError(f"git {args[0]} {self.web_url()} timed out after {self.timeout:.0f}s",
                                upstream=f"git:{self.name}") from exc
        except _TooMuchOutput:
            raise ResponseTooLarge(f"git {args[0]} {self.web_url()}: more than {limit} bytes of "
                                   "output", upstream=f"git:{self.name}") from None
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").replace(self.url, self.web_url())
            message = f"git {args[0]} {self.web_url()} failed: {_stderr_text(err) or res.returncode}"
            if any(t in err for t in _TRANSIENT):
                raise UpstreamError(message, upstream=f"git:{self.name}")
            raise SourceError(message)
        return res

    def poll(self) -> RefSnapshot:
        if self._http:
            # One request, no subprocess: the smart-HTTP ref advertisement.
            return parse_ls_remote(advertised_refs(self._session, self.url, upstream=self.upstream),  # type: ignore[arg-type]
                                   self.branch)
        res = self._git("ls-remote", "--heads", "--tags", "--end-of-options", self.url, limit=MAX_BODY)
        return parse_ls_remote(res.stdout.decode("utf-8", "replace"), self.branch,
                               upstream=f"git ls-remote {self.web_url()}")

    def _ensure_commit(self, sha: str) -> None:
        # Every argument that comes from outside (URL, commit) follows --end-of-options, and
        # the commit must be a full object id: nothing here can be read as a git option.
        check_commit(sha)
        # The mirror is shared by every thread here and every poller process on this state_dir.
        with self._fetch_lock, _locked(self.mirror.parent / f"{self.mirror.name}.lock"):
            if not self.mirror.exists():
                self.mirror.parent.mkdir(parents=True, exist_ok=True)
                self._git("init", "--bare", "-q", "--end-of-options", str(self.mirror))
            have = subprocess.run(["git", "cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}"],
                                  cwd=self.mirror, capture_output=True, check=False)
            if have.returncode == 0:
                return
            self._git("fetch", "-q", "--no-tags", "--end-of-options", self.url, sha, cwd=self.mirror)
            check = subprocess.run(["git", "cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}"],
                                   cwd=self.mirror, capture_output=True, check=False)
            if check.returncode != 0:
                raise NotFound(f"commit {sha} is not in {self.web_url()}")

    def create_tag(self, name: str, sha: str) -> None:
        """Push the lightweight tag ``name`` on ``sha`` to the remote (refused if it exists)."""
        check_git_ref(name, "tag")
        self._ensure_commit(sha)
        self._git("push", "-q", "--end-of-options", self.url, f"{sha}:refs/tags/{name}",
                  cwd=self.mirror)

    def write_archive(self, sha: str, out: BinaryIO) -> None:
        self._ensure_commit(sha)
        proc = subprocess.Popen(["git", "archive", "--format=tar", "--end-of-options", sha], cwd=self.mirror,
                                env={**os.environ, **_GIT_ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        stdout = proc.stdout
        assert stdout is not None
        out.writelines(iter(lambda: stdout.read(1 << 16), b""))
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise SourceError(f"git archive {sha} failed: {err.strip()}")
