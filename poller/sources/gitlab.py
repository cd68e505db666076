"""A GitLab project as a :class:`~poller.sources.base.Source`, through python-gitlab.

Polling is cheap when nothing moved: every push (branch or tag) creates a project event,
so the newest event id is read first (one request) and, when it equals the last one seen,
the previous snapshot is returned with ``unchanged=True``. Otherwise the branch head and
all tags are read. The event is read *before* the refs, so a push racing a poll is at
worst read twice, never missed.

python-gitlab would sleep and retry on 429 (``obey_rate_limit``) and, if asked, on 5xx;
every call here turns that off so the scheduler, not a library, decides when to retry.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import gitlab
import gitlab.exceptions
import requests

from poller.config import SourceConfig
from poller.errors import (
    NotFound,
    ResponseTooLarge,
    SlipwayError,
    SourceError,
    UpstreamError,
)
from poller.http import DEFAULT_TIMEOUT, check_response, make_session
from poller.names import check_commit, check_git_ref
from poller.sources.archive import chunk_stream, strip_leading_dir
from poller.sources.base import MAX_REFS, RefSnapshot

#: Passed to every python-gitlab call: fail at once instead of sleeping in the library.
_NO_RETRY: dict[str, Any] = {"obey_rate_limit": False, "retry_transient_errors": False,
                             "max_retries": 0}
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ARCHIVE_CHUNK = 64 * 1024


class GitLabSource:
    """Branch head and tags of one GitLab project (``cfg.gitlab``).

    ``session`` (default: a counted one from :func:`poller.http.make_session`) gets one
    response hook added, which keeps the latest response per thread so a 429/5xx can be
    reported with its ``Retry-After`` (python-gitlab's exceptions do not carry headers).
    """

    def __init__(self, cfg: SourceConfig, *, session: requests.Session | None = None):
        if cfg.gitlab is None:
            raise ValueError(f"source {cfg.name!r} is not a GitLab source")
        remote = cfg.gitlab
        self.name = cfg.name
        self.branch = cfg.branch
        self._base_url = remote.url.rstrip("/")
        self._project_ref = remote.project
        self.upstream = "gitlab:" + _host(self._base_url)
        self._session = session or make_session(self.upstream, verify=remote.ssl_verify)
        self._last = threading.local()
        self._session.hooks["response"].append(self._remember)
        self._gl = gitlab.Gitlab(
            self._base_url,
            private_token=remote.token.get_secret_value() if remote.token else None,
            session=self._session,
            ssl_verify=remote.ssl_verify,
            timeout=DEFAULT_TIMEOUT,  # type: ignore[arg-type]  # requests accepts a tuple
            retry_transient_errors=False,
        )
        self._project = self._gl.projects.get(remote.project, lazy=True)
        self._last_event: int | None = None
        self._snapshot: RefSnapshot | None = None

    def __repr__(self) -> str:
        return (f"GitLabSource(name={self.name!r}, project={self._project_ref!r}, "
                f"url={self.web_url()!r})")

    # -- Source ------------------------------------------------------------------------

    def poll(self) -> RefSnapshot:
        """One request when the newest event is unchanged, else events + branch + tags."""
        with self._translate("poll"):
            event_id = self._newest_event_id()
            if self._snapshot is not None and event_id is not None and event_id == self._last_event:
                return RefSnapshot(self.branch, self._snapshot.head, dict(self._snapshot.tags),
                                   unchanged=True)
            head = self._branch_head()
            tags = self._tags()
        self._last_event = event_id
        self._snapshot = RefSnapshot(self.branch, head, tags)
        return self._snapshot

    def write_archive(self, sha: str, out: BinaryIO) -> None:
        """Stream ``GET .../repository/archive.tar?sha=<sha>`` into ``out`` without its top dir."""
        if not _FULL_SHA.fullmatch(sha):
            raise ValueError(f"write_archive needs a full commit sha, got {sha!r}")
        with self._translate(f"archive {sha}"):
            chunks = self._project.repository_archive(
                sha=sha, format="tar", streamed=True, iterator=True, chunk_size=_ARCHIVE_CHUNK,
                **_NO_RETRY)
            strip_leading_dir(chunk_stream(chunks), out, "")

    def create_tag(self, name: str, sha: str) -> None:
        """Create the lightweight tag ``name`` on commit ``sha`` (``POST .../repository/tags``)."""
        check_git_ref(name, "tag")
        check_commit(sha)
        with self._translate(f"create tag {name}"):
            self._project.tags.create({"tag_name": name, "ref": sha}, **_NO_RETRY)

    def web_url(self) -> str:
        """The project page; ``/projects/<id>`` redirects there when only an id is configured."""
        parts = urlsplit(self._base_url)
        base = urlunsplit((parts.scheme, _host(self._base_url), parts.path, "", ""))
        if self._project_ref.isdigit():
            return f"{base}/projects/{self._project_ref}"
        return f"{base}/{self._project_ref.strip('/')}"

    # -- helpers -----------------------------------------------------------------------

    def _newest_event_id(self) -> int | None:
        """Id of the project's newest event (events are listed newest first)."""
        events = self._project.events.list(page=1, per_page=1, get_all=False, **_NO_RETRY)
        if not events:
            return None
        try:
            return int(str(events[0].id)[:20])
        except (AttributeError, ValueError):
            raise SourceError(f"{self.upstream}: malformed event in answer: expected an integer "
                              "id") from None

    def _tags(self) -> dict[str, str]:
        """Every tag's commit, page by page (numbered, never an endless ``next`` chain),
        refusing more than :data:`MAX_REFS`."""
        tags: dict[str, str] = {}
        per_page = 100
        for page in range(1, MAX_REFS // per_page + 2):
            batch = self._project.tags.list(page=page, per_page=per_page, get_all=False, **_NO_RETRY)
            for t in batch:
                name, commit = getattr(t, "name", None), getattr(t, "commit", None)
                if not isinstance(name, str) or not isinstance(commit, dict) \
                        or not isinstance(commit.get("id"), str):
                    raise SourceError(f"{self.upstream}: malformed tag in answer: expected "
                                      '{"name": str, "commit": {"id": str}}')
                tags[name] = commit["id"]
            if len(batch) < per_page:
                return tags
        raise ResponseTooLarge(f"{self.upstream}: more than {MAX_REFS} tags", upstream=self.upstream)

    def _branch_head(self) -> str | None:
        try:
            branch = self._project.branches.get(self.branch, **_NO_RETRY)
        except gitlab.exceptions.GitlabGetError as exc:
            # The events call already proved the project exists, so a 404 here is the branch.
            if exc.response_code == 404:
                return None
            raise
        commit = getattr(branch, "commit", None)
        if not isinstance(commit, dict) or not isinstance(commit.get("id"), str):
            raise SourceError(f"{self.upstream}: malformed branch in answer: expected "
                              '{"commit": {"id": str}}')
        return commit["id"]

    def _remember(self, resp: requests.Response, *args, **kwargs) -> None:
        """Response hook: keep this thread's latest response for its status and headers."""
        self._last.response = resp

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn python-gitlab and requests failures into Slipway errors, chained."""
        self._last.response = None
        try:
            yield
        except gitlab.exceptions.GitlabError as exc:
            raise self._from_gitlab(exc, what) from exc
        except requests.RequestException as exc:
            raise UpstreamError(f"{self.upstream}: {what} failed: {type(exc).__name__}",
                                upstream=self.upstream) from exc
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # JSON of the wrong shape
            raise SourceError(f"{self.upstream}: {what}: malformed answer "
                              f"({type(exc).__name__})") from exc

    def _from_gitlab(self, exc: gitlab.exceptions.GitlabError, what: str) -> SlipwayError:
        code = exc.response_code
        resp: requests.Response | None = getattr(self._last, "response", None)
        if code is not None and resp is not None and resp.status_code == code:
            try:
                check_response(resp, self.upstream)
            except SlipwayError as err:
                if isinstance(err, NotFound):
                    return NotFound(f"{err}: {_message(exc)}")
                return err
        if code is None:
            return UpstreamError(f"{self.upstream}: {what}: unreadable response",
                                 upstream=self.upstream)
        if code == 404:
            return NotFound(f"{self.upstream}: {what}: {_message(exc)}")
        if code == 429 or code >= 500:
            return UpstreamError(f"{self.upstream}: {what} -> {code}", upstream=self.upstream,
                                 status=code)
        return SourceError(f"{self.upstream}: {what} -> {code}: {_message(exc)}")


def _host(url: str) -> str:
    """``host[:port]`` of ``url``, without any user or password in it."""
    return urlsplit(url).netloc.rpartition("@")[2] or url


def _message(exc: gitlab.exceptions.GitlabError) -> str:
    """GitLab's own error text (``404 Project Not Found``), short."""
    return str(exc.error_message)[:200]
