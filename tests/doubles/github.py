"""A GitHub REST API test double over real HTTP, backed by real bare git repositories.

Serves what :class:`poller.sources.github.GitHubSource` uses, shaped like api.github.com:
``git/refs`` (paginated through ``Link``), ``git/matching-refs``, ``git/ref``, annotated tag
objects under ``git/tags``, and ``tarball`` (a 302 to a codeload-like URL serving a
``.tar.gz`` with an ``<owner>-<repo>-<short sha>/`` top directory).

Like GitHub it sends strong ``ETag`` validators computed from the body, answers a matching
``If-None-Match`` with ``304 Not Modified``, and keeps primary rate limits (``X-RateLimit-*``):
the token's (5000) and the anonymous one (60 per hour, per address). Every answered request
spends its bucket, except a 304 to an *authenticated* request: for anonymous requests a 304
costs like any other. When a budget is gone, API calls get GitHub's 403 "API rate limit
exceeded". Injected faults carry the ``X-RateLimit-*`` headers too, and a 403/429 fault says
"secondary rate limit" as GitHub's does. ``git/matching-refs`` answers every match in one
response whatever ``per_page`` says (what GitHub does in practice), ``git/refs`` lists
``refs/pull/*`` too.

Test hooks: :meth:`GitHubDouble.fail_next`, :meth:`GitHubDouble.exhaust_rate_limit`,
:attr:`GitHubDouble.rate_limit_remaining`, :attr:`GitHubDouble.anonymous_remaining`,
:attr:`GitHubDouble.matching_refs_page_size` (paginate ``matching-refs`` after all),
:attr:`GitHubDouble.link_base` (``Link`` headers that point at another server),
:attr:`GitHubDouble.requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, unquote, urlencode

from werkzeug.wrappers import Request, Response

from tests.doubles._wire import Abort, WireDouble
from tests.doubles.gitrepo import GitRepo, git

DEFAULT_TOKEN = "ghp_slipwayDoubleToken000000000000000000"
DOCS = "https://docs.github.com/rest"
RATE_LIMIT = 5000
ANONYMOUS_RATE_LIMIT = 60
SECONDARY = ("You have exceeded a secondary rate limit. Please wait a few minutes before you try "
             "again.")



@dataclass
class _Repo:
    id: int
    owner: str
    name: str
    repo: GitRepo
    private: bool

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.repo.bare, check=check)


class GitHubDouble(WireDouble):
    """An HTTP server on ``127.0.0.1`` answering like ``https://api.github.com``.

    ``token`` is the only token accepted (``Authorization: Bearer``/``token``); ``None``
    turns authentication off. :attr:`url` is the API base URL to configure as ``api_url``.
    """

    def __init__(self, *, token: str | None = DEFAULT_TOKEN, host: str = "127.0.0.1",
                 rate_limit: int = RATE_LIMIT):
        self.token = token
        self.rate_limit = rate_limit
        self.rate_limit_remaining = rate_limit
        self.rate_limit_reset = int(time.time()) + 3600
        self.anonymous_remaining = ANONYMOUS_RATE_LIMIT
        self.matching_refs_page_size: int | None = None
        self.link_base: str | None = None
        self._repos: dict[str, _Repo] = {}
        self._codeload_tokens: set[str] = set()
        self._serve(host, "github-double", self._wsgi)

    # -- test API ----------------------------------------------------------------------

    def add_repo(self, full_name: str, repo: GitRepo, *, private: bool = True) -> None:
        """Serve ``repo`` as ``owner/name``."""
        owner, name = full_name.split("/")
        with self._lock:
            self._repos[full_name.lower()] = _Repo(len(self._repos) + 1, owner, name, repo, private)

    def exhaust_rate_limit(self, reset_in: float = 60) -> None:
        """Spend the whole primary rate limit; it resets ``reset_in`` seconds from now."""
        with self._lock:
            self.rate_limit_remaining = 0
            self.rate_limit_reset = int(time.time() + reset_in)

    # -- HTTP plumbing -----------------------------------------------------------------

    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request, raw_path, fault = self._accept(environ)
        if fault is not None:
            response = _fault_response(fault.status, fault.retry_after)
            with self._lock:
                response.headers.update(self._rate_headers(bool(request.headers.get("Authorization"))))
            return response(environ, start_response)
        if raw_path.startswith("/_codeload/"):
            return self._codeload(request, raw_path)(environ, start_response)
        try:
            response = self._route(request, raw_path)
        except Abort as abort:
            response = abort.response
        return self._finish(request, response)(environ, start_response)

    def _finish(self, request: Request, response: Response) -> Response:
        """Add ETag/304 handling and spend the rate limit, as GitHub does."""
        if response.status_code == 200 and response.mimetype == "application/json":
            etag = '"' + hashlib.sha256(response.get_data()).hexdigest()[:40] + '"'
            response.headers["ETag"] = etag
            if _etag_matches(request.headers.get("If-None-Match"), etag):
                response = Response(status=304, headers={"ETag": etag})
        authenticated = bool(request.headers.get("Authorization"))
        with self._lock:
            if not authenticated:   # a 304 is free for authenticated requests only
                self.anonymous_remaining = max(0, self.anonymous_remaining - 1)
            elif response.status_code != 304 and self.rate_limit_remaining > 0:
                self.rate_limit_remaining -= 1
            response.headers.update(self._rate_headers(authenticated))
        return response

    def _rate_headers(self, authenticated: bool = True) -> dict[str, str]:
        limit, remaining = ((self.rate_limit, self.rate_limit_remaining) if authenticated
                            else (ANONYMOUS_RATE_LIMIT, self.anonymous_remaining))
        return {"X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(self.rate_limit_reset),
                "X-RateLimit-Used": str(limit - remaining),
                "X-RateLimit-Resource": "core"}

    def _route(self, request: Request, raw_path: str) -> Response:
        authenticated = self._authenticate(request)
        with self._lock:
            exhausted = (self.rate_limit_remaining if request.headers.get("Authorization")
                         else self.anonymous_remaining) <= 0
        if exhausted:
            raise Abort(_error(403, "API rate limit exceeded for user. (But here's the good news: "
                                     "Authenticated requests get a higher rate limit.)"))
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)(?:/(.*))?", raw_path)
        writing = request.method == "POST" and match is not None and match[3] == "git/refs"
        if not match or (request.method != "GET" and not writing):
            raise Abort(_error(404, "Not Found"))
        owner, name, rest = unquote(match[1]), unquote(match[2]), match[3] or ""
        repo = self._repos.get(f"{owner}/{name}".lower())
        if repo is None or (repo.private and not authenticated):
            raise Abort(_error(404, "Not Found"))
        if writing:
            if not request.headers.get("Authorization"):  # writes always need a token
                raise Abort(_error(404, "Not Found"))
            return self._create_ref(request, repo)
        for pattern, handler in self._routes():
            found = re.fullmatch(pattern, rest)
            if found:
                return handler(request, repo, *(unquote(g) for g in found.groups()))
        raise Abort(_error(404, "Not Found"))

    def _routes(self) -> list[tuple[str, Callable[..., Response]]]:
        return [
            (r"", self._get_repo),
            (r"git/refs", lambda req, repo: self._list_refs(req, repo, "refs/")),
            (r"git/matching-refs/(.*)",
             lambda req, repo, prefix: self._list_refs(req, repo, f"refs/{prefix}", matching=True)),
            (r"git/ref/(.+)", self._get_ref),
            (r"git/tags/([0-9a-f]{40})", self._get_tag),
            (r"tarball/(.+)", self._tarball),
        ]

    def _authenticate(self, request: Request) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if not auth:
            return self.token is None
        if self.token is not None and (scheme.lower() not in ("bearer", "token")
                                       or given.strip() != self.token):
            raise Abort(_error(401, "Bad credentials"))
        return True

    # -- endpoints ---------------------------------------------------------------------

    def _get_repo(self, request: Request, repo: _Repo) -> Response:
        api = request.host_url.rstrip("/")
        heads = self._refs(repo, "refs/heads/")
        return _json({
            "id": repo.id, "node_id": f"R_{repo.id}", "name": repo.name,
            "full_name": repo.full_name, "private": repo.private,
            "owner": {"login": repo.owner, "id": 1, "type": "Organization"},
            "html_url": f"{api}/{repo.full_name}", "description": None, "fork": False,
            "url": f"{api}/repos/{repo.full_name}", "default_branch": repo.repo.branch,
            "visibility": "private" if repo.private else "public", "size": 0 if not heads else 1,
        })

    def _list_refs(self, request: Request, repo: _Repo, prefix: str, matching: bool = False) -> Response:
        refs = self._refs(repo, prefix)
        if not self._refs(repo, "refs/"):
            raise Abort(_error(409, "Git Repository is empty."))
        items = [self._ref_json(request, repo, name, obj) for name, obj in sorted(refs.items())]
        if matching and self.matching_refs_page_size is None:
            return _json(items)   # matching-refs: everything at once, per_page or not
        return _paginated(request, items, per_page=self.matching_refs_page_size if matching else None,
                          base=self.link_base)

    def _create_ref(self, request: Request, repo: _Repo) -> Response:
        """``POST /repos/{owner}/{repo}/git/refs`` with ``{"ref": "refs/...", "sha": ...}``."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("ref"), str) \
                or not isinstance(body.get("sha"), str):
            raise Abort(_error(422, "Invalid request.\n\n\"ref\", \"sha\" weren't supplied."))
        ref, sha = body["ref"], body["sha"]
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise Abort(_error(422, "Reference name must start with 'refs/' and have at least "
                                    "two slashes."))
        if repo.git("cat-file", "-t", sha, check=False) not in ("commit", "tag"):
            raise Abort(_error(422, "Object does not exist"))
        with self._lock:
            if self._refs(repo, ref).get(ref) is not None:
                raise Abort(_error(422, "Reference already exists"))
            repo.git("update-ref", ref, sha)
        kind = repo.git("cat-file", "-t", sha)
        resp = _json(self._ref_json(request, repo, ref, (sha, kind)))
        resp.status_code = 201
        return resp

    def _get_ref(self, request: Request, repo: _Repo, ref: str) -> Response:
        obj = self._refs(repo, f"refs/{ref}").get(f"refs/{ref}")
        if obj is None:
            raise Abort(_error(404, "Not Found"))
        return _json(self._ref_json(request, repo, f"refs/{ref}", obj))

    def _get_tag(self, request: Request, repo: _Repo, sha: str) -> Response:
        if repo.git("cat-file", "-t", sha, check=False) != "tag":
            raise Abort(_error(404, "Not Found"))
        header, _, message = repo.git("cat-file", "tag", sha).partition("\n\n")
        fields = dict(line.split(" ", 1) for line in header.splitlines())
        tagger = re.fullmatch(r"(.*) <(.*)> (\d+) ([+-]\d{4})", fields.get("tagger", ""))
        api = request.host_url.rstrip("/")
        return _json({
            "node_id": f"TAG_{sha[:12]}", "tag": fields["tag"], "sha": sha,
            "url": f"{api}/repos/{repo.full_name}/git/tags/{sha}", "message": message,
            "tagger": {"name": tagger[1], "email": tagger[2],
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(tagger[3])))}
            if tagger else None,
            "object": {"sha": fields["object"], "type": fields["type"],
                       "url": self._object_url(request, repo, fields["type"], fields["object"])},
            "verification": {"verified": False, "reason": "unsigned", "signature": None,
                             "payload": None, "verified_at": None},
        })

    def _tarball(self, request: Request, repo: _Repo, ref: str) -> Response:
        sha = repo.git("rev-parse", "--verify", "--quiet", "--end-of-options",
                       f"{ref}^{{commit}}", check=False)
        if not sha:
            raise Abort(_error(404, "Not Found"))
        token = secrets.token_hex(8)
        with self._lock:
            self._codeload_tokens.add(token)
        location = (f"{request.host_url.rstrip('/')}/_codeload/{repo.full_name}/legacy.tar.gz/"
                    f"{quote(ref, safe='')}?token={token}")
        return Response(status=302, headers={"Location": location})

    def _codeload(self, request: Request, raw_path: str) -> Response:
        """The redirect target: a gzip tarball, authorised by a one-time URL token."""
        match = re.fullmatch(r"/_codeload/([^/]+)/([^/]+)/legacy\.tar\.gz/([^/]+)", raw_path)
        with self._lock:
            valid = request.args.get("token") in self._codeload_tokens
            self._codeload_tokens.discard(request.args.get("token", ""))
        repo = (self._repos.get(f"{unquote(match[1])}/{unquote(match[2])}".lower())
                if match else None)
        if not (match and valid and repo):
            return Response("Not Found", 404, content_type="text/plain")
        sha = repo.git("rev-parse", "--verify", f"{unquote(match[3])}^{{commit}}")
        stem = f"{repo.owner}-{repo.name}-{sha[:7]}"
        data = subprocess.run(["git", "archive", "--format=tar.gz", f"--prefix={stem}/", sha],
                              cwd=repo.repo.bare, capture_output=True, check=True).stdout
        return Response(data, 200, content_type="application/x-gzip", headers={
            "Content-Disposition": f"attachment; filename={stem}.tar.gz"})

    # -- reading the repository --------------------------------------------------------

    def _refs(self, repo: _Repo, prefix: str) -> dict[str, tuple[str, str]]:
        """``refname -> (object sha, object type)`` for refs starting with ``prefix``."""
        out = repo.git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(objecttype)")
        rows = (line.split("\0") for line in out.splitlines() if line)
        return {name: (sha, kind) for name, sha, kind in rows if name.startswith(prefix)}

    def _ref_json(self, request: Request, repo: _Repo, name: str, obj: tuple[str, str]) -> dict:
        sha, kind = obj
        api = request.host_url.rstrip("/")
        return {"ref": name, "node_id": f"REF_{hashlib.sha1(name.encode()).hexdigest()[:12]}",
                "url": f"{api}/repos/{repo.full_name}/git/{quote(name)}",
                "object": {"sha": sha, "type": kind,
                           "url": self._object_url(request, repo, kind, sha)}}

    @staticmethod
    def _object_url(request: Request, repo: _Repo, kind: str, sha: str) -> str:
        plural = {"commit": "commits", "tag": "tags", "tree": "trees", "blob": "blobs"}[kind]
        return f"{request.host_url.rstrip('/')}/repos/{repo.full_name}/git/{plural}/{sha}"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers=headers,
                    content_type="application/json; charset=utf-8")


def _error(status: int, message: str) -> Response:
    return _json({"message": message, "documentation_url": DOCS, "status": str(status)}, status)


def _fault_response(status: int, retry_after: float | None) -> Response:
    message = {503: "Service Unavailable", 403: SECONDARY, 429: SECONDARY}.get(status, f"HTTP {status}")
    response = _error(status, message)
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after))
    return response


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


def _paginated(request: Request, items: list[Any], *, per_page: int | None = None,
               base: str | None = None) -> Response:
    """One page of ``items`` with a GitHub ``Link`` header (default 30, at most 100).
    ``per_page``: fixed, whatever the request asks; ``base``: the server the links name."""
    try:
        page = max(1, int(request.args.get("page", 1)))
        per_page = per_page or min(100, max(1, int(request.args.get("per_page", 30))))
    except ValueError:
        raise Abort(_error(400, "Invalid pagination parameters")) from None
    pages = max(1, -(-len(items) // per_page))
    base = (base or request.host_url).rstrip("/") + request.environ["double.raw_path"]

    def page_url(n: int) -> str:
        args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "per_page")]
        return f"{base}?{urlencode(args + [('per_page', per_page), ('page', n)])}"

    links = []
    if page > 1:
        links += [f'<{page_url(page - 1)}>; rel="prev"', f'<{page_url(1)}>; rel="first"']
    if page < pages:
        links += [f'<{page_url(page + 1)}>; rel="next"', f'<{page_url(pages)}>; rel="last"']
    headers = {"Link": ", ".join(links)} if links else {}
    return _json(items[(page - 1) * per_page: page * per_page], headers=headers)
