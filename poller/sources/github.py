"""A GitHub repository as a :class:`~poller.sources.base.Source`, over the REST API.

Polling reads two documented endpoints as *conditional* requests, each sent with the
``ETag`` it had last time: ``GET .../git/ref/heads/{branch}`` (the branch head) and
``GET .../git/matching-refs/tags`` (every tag). Only ``refs/tags/*`` and the branch are ever
read, so pull-request refs (``refs/pull/*``, which ``git/refs`` lists too, two per pull
request) cost nothing. ``matching-refs`` ignores ``per_page`` in practice and answers in one
page; when it does paginate, ``Link: rel="next"`` is followed, but only on the configured API
host (the token is never sent anywhere else). An unchanged repository costs two
``304 Not Modified``; GitHub counts those against the rate limit only for unauthenticated
requests (hence the warning at config load for a GitHub source without a token).

Rate limits: a primary limit (``X-RateLimit-Remaining: 0``) waits until
``X-RateLimit-Reset``; ``Retry-After`` is honoured; a secondary limit (403 or 429 without
either) waits at least :data:`SECONDARY_RATE_LIMIT_WAIT` seconds, as GitHub asks. None of
them is a credentials problem. Annotated tags point at tag objects; they are peeled once with
``GET .../git/tags/{sha}`` and the result is cached by the tag object's sha, which is immutable.

The page cache is only replaced after a poll fully succeeded, so a poll that fails half
way (say, while peeling) is repeated in full next time instead of being answered by 304s.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests

from poller.config import SourceConfig
from poller.errors import ResponseTooLarge, SourceError, UpstreamError
from poller.http import DEFAULT_TIMEOUT, check_response, make_session, parse_retry_after
from poller.names import check_commit, check_git_ref
from poller.sources.archive import chunk_stream, strip_leading_dir
from poller.sources.base import MAX_REFS, RefSnapshot

API_VERSION = "2022-11-28"
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_PER_PAGE = 100
SECONDARY_RATE_LIMIT_WAIT = 60.0
_MAX_TAG_DEPTH = 8
_ARCHIVE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class _Page:
    """One page of refs as last received: its validator, refs and next link."""

    etag: str | None
    refs: list[dict[str, Any]]
    next_url: str | None


class GitHubSource:
    """Branch head and tags of one GitHub repository (``cfg.github``)."""

    def __init__(self, cfg: SourceConfig, *, session: requests.Session | None = None):
        if cfg.github is None:
            raise ValueError(f"source {cfg.name!r} is not a GitHub source")
        remote = cfg.github
        self.name = cfg.name
        self.branch = cfg.branch
        self._repo = remote.repo
        self._api = remote.api_url.rstrip("/")
        self._token = remote.token
        self.upstream = "github:" + (urlsplit(self._api).netloc.rpartition("@")[2] or self._api)
        self._session = session or make_session(self.upstream)
        self._pages: dict[str, _Page] = {}
        self._peeled: dict[str, str | None] = {}
        self._snapshot: RefSnapshot | None = None

    def __repr__(self) -> str:
        return f"GitHubSource(name={self.name!r}, repo={self._repo!r}, api={self._api!r})"

    # -- Source ------------------------------------------------------------------------

    def poll(self) -> RefSnapshot:
        """List refs conditionally; peel new annotated tags; report ``unchanged`` on 304s."""
        pages: dict[str, _Page] = {}
        tag_refs, tags_modified = self._list_refs(self._repo_url(f"git/matching-refs/tags?per_page={_PER_PAGE}"),
                                                  pages)
        branch_ref = f"refs/heads/{self.branch}"
        head_refs, head_modified = self._list_refs(self._repo_url(f"git/ref/heads/{quote(self.branch)}"),
                                                   pages, missing_ok=True)
        if not (tags_modified or head_modified) and self._snapshot is not None:
            self._pages = pages
            return dataclasses.replace(self._snapshot, tags=dict(self._snapshot.tags),
                                       unchanged=True)
        head = next((obj["sha"] for name, obj in (_ref_entry(r, self.upstream) for r in head_refs)
                     if name == branch_ref), None)
        tags: dict[str, str] = {}
        for ref in tag_refs:
            name, obj = _ref_entry(ref, self.upstream)
            if name.startswith("refs/tags/"):
                commit = self._peel(obj["sha"], obj["type"])
                if commit is not None:
                    tags[name[len("refs/tags/"):]] = commit
        self._pages = pages
        self._snapshot = RefSnapshot(self.branch, head, tags)
        return self._snapshot

    def write_archive(self, sha: str, out: BinaryIO) -> None:
        """Stream ``GET .../tarball/{sha}`` (redirected to codeload) without its top dir."""
        if not _FULL_SHA.fullmatch(sha):
            raise ValueError(f"write_archive needs a full commit sha, got {sha!r}")
        resp = self._get(self._repo_url(f"tarball/{sha}"), stream=True)
        with resp:
            try:
                strip_leading_dir(chunk_stream(resp.iter_content(_ARCHIVE_CHUNK)), out, "gz")
            except requests.RequestException as exc:
                raise UpstreamError(f"{self.upstream}: reading tarball {sha} failed: "
                                    f"{type(exc).__name__}", upstream=self.upstream) from exc

    def create_tag(self, name: str, sha: str) -> None:
        """Create the lightweight tag ``name`` on commit ``sha``: ``POST .../git/refs``."""
        check_git_ref(name, "tag")
        check_commit(sha)
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        url = self._repo_url("git/refs")
        try:
            resp = self._session.post(url, headers=headers, timeout=DEFAULT_TIMEOUT,
                                      json={"ref": f"refs/tags/{name}", "sha": sha})
        except requests.RequestException as exc:
            raise UpstreamError(f"{self.upstream}: POST {_path(url)} failed: {type(exc).__name__}",
                                upstream=self.upstream) from exc
        if resp.status_code == 422:
            try:
                message = str(resp.json().get("message", ""))[:200]
            except (ValueError, AttributeError):
                message = resp.text[:200]
            raise SourceError(f"{self.upstream}: cannot create tag {name}: {message}")
        self._raise_for_rate_limit(resp)
        check_response(resp, self.upstream)

    def web_url(self) -> str:
        """``https://github.com/owner/name`` (or the GitHub Enterprise host's equivalent)."""
        parts = urlsplit(self._api)
        host = parts.hostname or ""
        host = host.removeprefix("api.")
        if parts.port:
            host += f":{parts.port}"
        path = re.sub(r"/api/v3$", "", parts.path.rstrip("/"))
        return urlunsplit((parts.scheme, host, f"{path}/{self._repo}", "", ""))

    # -- helpers -----------------------------------------------------------------------

    def _list_refs(self, first: str, pages: dict[str, _Page], *,
                   missing_ok: bool = False) -> tuple[list[dict[str, Any]], bool]:
        """The refs at ``first`` and its next pages (recorded in ``pages``), and whether any
        page changed. ``missing_ok``: 404 (no such ref) and 409 (empty repository) are no refs."""
        url: str | None = first
        refs: list[dict[str, Any]] = []
        modified = False
        while url and url not in pages:
            cached = self._pages.get(url)
            headers = {"If-None-Match": cached.etag} if cached and cached.etag else {}
            resp = self._get(url, headers=headers, allow=(304, 404, 409) if missing_ok else (304, 409))
            if resp.status_code == 304 and cached is not None:
                page = cached
            elif resp.status_code in (404, 409):  # no such ref / "Git Repository is empty."
                page, modified = _Page(None, [], None), modified or cached is None or bool(cached.refs)
            elif resp.status_code == 304:
                raise UpstreamError(f"{self.upstream}: 304 for an unconditional request",
                                    upstream=self.upstream, status=304)
            else:
                body = self._json(resp, (list, dict))
                page = _Page(resp.headers.get("ETag"), body if isinstance(body, list) else [body],
                             self._next_link(resp))
                modified = True
            pages[url] = page
            refs.extend(page.refs)
            if len(refs) > MAX_REFS or len(pages) > MAX_REFS // _PER_PAGE + 1:
                raise ResponseTooLarge(f"{self.upstream}: more than {MAX_REFS} refs",
                                       upstream=self.upstream)
            url = page.next_url
        return refs, modified

    def _next_link(self, resp: requests.Response) -> str | None:
        """``Link: rel="next"``, refused unless it stays on the configured API host."""
        url = resp.links.get("next", {}).get("url")
        if not url:
            return None
        url = urljoin(resp.url, url)
        api, nxt = urlsplit(self._api), urlsplit(url)
        if (nxt.scheme, nxt.hostname, nxt.port) != (api.scheme, api.hostname, api.port):
            raise SourceError(f"{self.upstream}: GET {_path(resp.url)}: the next page is on another "
                              f"host ({nxt.hostname}); not followed, the token goes to "
                              f"{api.hostname} only")
        return url

    def _peel(self, sha: str, kind: str, depth: int = 0) -> str | None:
        """The commit a ref object ends at; ``None`` for trees and blobs."""
        if kind == "commit":
            return sha
        if kind != "tag" or depth >= _MAX_TAG_DEPTH:
            return None
        if sha not in self._peeled:
            target = _object(self._json(self._get(self._repo_url(f"git/tags/{sha}")), dict)
                             .get("object"), self.upstream)
            self._peeled[sha] = self._peel(target["sha"], target["type"], depth + 1)
        return self._peeled[sha]

    def _repo_url(self, rest: str) -> str:
        return f"{self._api}/repos/{quote(self._repo)}/{rest}"

    def _get(self, url: str, *, headers: dict[str, str] | None = None, stream: bool = False,
             allow: tuple[int, ...] = ()) -> requests.Response:
        """GET with auth and API headers; errors become Slipway errors."""
        all_headers = {"Accept": "application/vnd.github+json",
                       "X-GitHub-Api-Version": API_VERSION, **(headers or {})}
        if self._token is not None:
            all_headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        try:
            resp = self._session.get(url, headers=all_headers, stream=stream,
                                     timeout=DEFAULT_TIMEOUT)
        except requests.RequestException as exc:
            raise UpstreamError(f"{self.upstream}: GET {_path(url)} failed: {type(exc).__name__}",
                                upstream=self.upstream) from exc
        if resp.status_code in allow:
            return resp
        self._raise_for_rate_limit(resp)
        return check_response(resp, self.upstream)

    def _raise_for_rate_limit(self, resp: requests.Response) -> None:
        """403/429 with no quota left (or a secondary limit) is temporary, not an auth error."""
        if resp.status_code not in (403, 429):
            return
        what = f"{self.upstream}: GET {_path(resp.url)} -> {resp.status_code} (rate limited)"
        if resp.headers.get("X-RateLimit-Remaining") == "0":
            reset = resp.headers.get("X-RateLimit-Reset", "")
            retry_after = max(0.0, float(reset) - time.time()) if reset.isdigit() else None
            raise UpstreamError(what, upstream=self.upstream, status=resp.status_code,
                                retry_after=retry_after)
        if "Retry-After" in resp.headers:
            raise UpstreamError(what, upstream=self.upstream, status=resp.status_code,
                                retry_after=parse_retry_after(resp.headers["Retry-After"]))
        # A secondary rate limit: 429, or 403 saying so (a plain 403 is a permissions problem).
        if resp.status_code == 429 or _says_rate_limit(resp):
            raise UpstreamError(what.replace("(rate limited)", "(secondary rate limit)"),
                                upstream=self.upstream, status=resp.status_code,
                                retry_after=SECONDARY_RATE_LIMIT_WAIT)

    def _json(self, resp: requests.Response, kind: type | tuple[type, ...]) -> Any:
        try:
            data = resp.json()
        except ValueError as exc:
            raise SourceError(f"{self.upstream}: GET {_path(resp.url)}: not JSON") from exc
        if not isinstance(data, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise SourceError(f"{self.upstream}: GET {_path(resp.url)}: expected a JSON "
                              f"{names}, got {type(data).__name__}")
        return data


def _says_rate_limit(resp: requests.Response) -> bool:
    """GitHub's 403 for a secondary limit says so in its message."""
    try:
        message = str((resp.json() or {}).get("message", ""))
    except (ValueError, AttributeError):
        return False
    return "rate limit" in message.lower()


def _object(obj: Any, upstream: str) -> dict[str, str]:
    """A git object reference ``{"sha": <full sha>, "type": str}``; anything else is refused."""
    if (not isinstance(obj, dict) or not isinstance(obj.get("type"), str)
            or not isinstance(obj.get("sha"), str) or not _FULL_SHA.fullmatch(obj["sha"])):
        raise SourceError(f"{upstream}: malformed git object in answer: expected "
                          '{"sha": <full sha>, "type": ...}')
    return obj


def _ref_entry(ref: Any, upstream: str) -> tuple[str, dict[str, str]]:
    """``(name, object)`` of one entry of ``git/refs``, checked."""
    if not isinstance(ref, dict) or not isinstance(ref.get("ref"), str):
        raise SourceError(f"{upstream}: malformed ref in answer: expected "
                          '{"ref": str, "object": {...}}')
    return ref["ref"], _object(ref.get("object"), upstream)


def _path(url: str) -> str:
    """The path of ``url`` only: short, and never carries credentials."""
    return urlsplit(url).path
