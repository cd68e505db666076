"""A GitLab REST API v4 test double over real HTTP, backed by real bare git repositories.

It serves the slice of the API python-gitlab calls for Slipway, shaped like GitLab's own
responses: projects by numeric id or URL-encoded path (``games%2Flobby``), branches,
tags (paginated with ``X-Page``/``X-Next-Page``/``X-Total``/``Link``), commits, project
events and repository archives. Everything is read from the bare repository on each
request, so ``GitRepo.commit()``/``tag()`` are visible at once.

Push events are synthesized: on every request touching a project the double compares the
repository's refs with what it saw last time and records one GitLab-shaped push event
(``pushed new`` / ``pushed to`` / ``deleted``) per changed ref, with ids that only grow.

Test hooks: :meth:`GitLabDouble.fail_next` (fault injection), :attr:`GitLabDouble.requests`
(every ``(method, raw path)`` received, query string dropped).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, unquote, urlencode

from werkzeug.wrappers import Request, Response

from tests.doubles._wire import Abort, WireDouble
from tests.doubles.gitrepo import GitRepo, git

DEFAULT_TOKEN = "glpat-slipway-double-token"
_AUTHOR = {"id": 1, "username": "slipway-bot", "name": "Slipway Bot", "state": "active",
           "avatar_url": None, "web_url": ""}
_ARCHIVE_FORMATS = {"tar": ("tar", "application/x-tar"), "tar.gz": ("tar.gz", "application/gzip"),
                    "tgz": ("tgz", "application/gzip"), "zip": ("zip", "application/zip")}


def _now() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")



@dataclass
class _Project:
    id: int
    path_with_namespace: str
    repo: GitRepo
    visibility: str
    created_at: str = field(default_factory=_now)
    refs: dict[str, str] = field(default_factory=dict)   # refname -> object sha, as last seen
    events: list[dict] = field(default_factory=list)     # oldest first
    commits: dict[str, dict] = field(default_factory=dict)  # sha -> commit JSON (immutable)

    @property
    def path(self) -> str:
        return self.path_with_namespace.rsplit("/", 1)[-1]

    @property
    def namespace(self) -> str:
        return self.path_with_namespace.rsplit("/", 1)[0] if "/" in self.path_with_namespace else ""

    def git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.repo.bare, check=check)


class GitLabDouble(WireDouble):
    """An HTTP server on ``127.0.0.1`` that answers like GitLab's ``/api/v4``.

    ``token`` is the only personal access token accepted (``PRIVATE-TOKEN`` header,
    ``Authorization: Bearer`` or ``private_token=``); ``None`` turns authentication off.
    """

    def __init__(self, *, token: str | None = DEFAULT_TOKEN, host: str = "127.0.0.1"):
        self.token = token
        self._projects: dict[int, _Project] = {}
        self._project_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._serve(host, "gitlab-double", self._wsgi)

    # -- test API ----------------------------------------------------------------------

    def add_project(self, path: str, repo: GitRepo, *, visibility: str = "private") -> int:
        """Serve ``repo`` as project ``path`` (``group/name``); returns its numeric id.

        Refs already in the repository produce ``pushed new`` events, as the first push
        of an imported project would.
        """
        with self._lock:
            project = _Project(next(self._project_ids), path.strip("/"), repo, visibility)
            self._projects[project.id] = project
            self._sync_events(project)
            return project.id

    def events(self, project_id: int) -> list[dict]:
        """The project's synthesized events, newest first (as the API lists them)."""
        with self._lock:
            project = self._projects[project_id]
            self._sync_events(project)
            return list(reversed(project.events))

    # -- HTTP plumbing -----------------------------------------------------------------

    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request, raw_path, fault = self._accept(environ)
        if fault is not None:
            response = _fault_response(fault.status, fault.retry_after)
        else:
            try:
                response = self._route(request, raw_path)
            except Abort as abort:
                response = abort.response
        return response(environ, start_response)

    def _route(self, request: Request, raw_path: str) -> Response:
        segments = raw_path.split("/")
        if segments[:3] != ["", "api", "v4"]:
            raise Abort(_json({"error": "404 Not Found"}, 404))
        self._authenticate(request)
        writing = request.method == "POST" and "/".join(segments[5:]) == "repository/tags"
        if len(segments) < 5 or segments[3] != "projects" or (request.method != "GET" and not writing):
            raise Abort(_json({"error": "404 Not Found"}, 404))
        project = self._project(request, unquote(segments[4]))
        rest = "/".join(segments[5:])
        if writing:
            return self._create_tag(request, project)
        for pattern, handler in self._routes():
            match = re.fullmatch(pattern, rest)
            if match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with self._lock:
                    self._sync_events(project)
                return handler(request, project, **args)
        raise Abort(_json({"error": "404 Not Found"}, 404))

    def _routes(self) -> list[tuple[str, Callable[..., Response]]]:
        return [
            (r"", self._get_project),
            (r"events", self._list_events),
            (r"repository/branches", self._list_branches),
            (r"repository/branches/(?P<name>[^/]+)", self._get_branch),
            (r"repository/tags", self._list_tags),
            (r"repository/tags/(?P<name>[^/]+)", self._get_tag),
            (r"repository/commits/(?P<sha>[^/]+)", self._get_commit),
            (r"repository/archive(?:\.(?P<fmt>tar\.gz|tar|tgz|zip))?", self._archive),
        ]

    def _authenticate(self, request: Request) -> None:
        given = request.headers.get("PRIVATE-TOKEN") or request.args.get("private_token")
        auth = request.headers.get("Authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        request.environ["double.authenticated"] = self.token is None or given == self.token
        if given is not None and self.token is not None and given != self.token:
            raise Abort(_json({"message": "401 Unauthorized"}, 401))

    def _project(self, request: Request, ref: str) -> _Project:
        with self._lock:
            if ref.isdigit():
                project = self._projects.get(int(ref))
            else:
                project = next((p for p in self._projects.values()
                                if p.path_with_namespace == ref), None)
        visible = project is not None and (project.visibility == "public"
                                           or request.environ["double.authenticated"])
        if not visible:
            raise Abort(_json({"message": "404 Project Not Found"}, 404))
        return project  # type: ignore[return-value]

    # -- endpoints ---------------------------------------------------------------------

    def _get_project(self, request: Request, project: _Project) -> Response:
        return _json(self._project_json(request, project))

    def _list_events(self, request: Request, project: _Project) -> Response:
        with self._lock:
            events = list(project.events)
        action = request.args.get("action")
        if action is not None and action != "pushed":
            events = []
        if request.args.get("sort", "desc") != "asc":
            events.reverse()
        return _paginated(request, events)

    def _list_branches(self, request: Request, project: _Project) -> Response:
        heads = self._refs(project, "refs/heads/")
        search = request.args.get("search")
        names = sorted(n for n in heads if not search or search in n)
        return _paginated(request,
                          [self._branch_json(request, project, n, heads[n]) for n in names])

    def _get_branch(self, request: Request, project: _Project, name: str) -> Response:
        sha = self._refs(project, "refs/heads/").get(name)
        if sha is None:
            raise Abort(_json({"message": "404 Branch Not Found"}, 404))
        return _json(self._branch_json(request, project, name, sha))

    def _list_tags(self, request: Request, project: _Project) -> Response:
        tags = self._tags(request, project)
        order = request.args.get("order_by", "updated")
        if order == "updated":
            tags.sort(key=lambda t: (t["commit"]["committed_date"], t["name"]))
        else:
            tags.sort(key=lambda t: t["name"])
        if request.args.get("sort", "desc") != "asc":
            tags.reverse()
        return _paginated(request, tags)

    def _create_tag(self, request: Request, project: _Project) -> Response:
        """``POST /projects/:id/repository/tags`` (``tag_name``, ``ref``, optional ``message``)."""
        if not request.environ["double.authenticated"]:  # writes always need the token
            raise Abort(_json({"message": "401 Unauthorized"}, 401))
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        body = body if isinstance(body, dict) else {}
        name, ref = body.get("tag_name"), body.get("ref")
        if not name or not ref:
            raise Abort(_json({"error": "tag_name, ref are missing"}, 400))
        with self._lock:
            if name in self._refs(project, "refs/tags/"):
                raise Abort(_json({"message": f"Tag {name} already exists"}, 400))
            sha = self._resolve(project, ref)
            if sha is None:
                raise Abort(_json({"message": "Target " + ref + " is invalid"}, 400))
            if body.get("message"):
                project.git("tag", "-a", "-m", body["message"], "--end-of-options", name, sha)
            else:
                project.git("tag", "--end-of-options", name, sha)
        tag = next(t for t in self._tags(request, project) if t["name"] == name)
        return _json(tag, 201)

    def _get_tag(self, request: Request, project: _Project, name: str) -> Response:
        tag = next((t for t in self._tags(request, project) if t["name"] == name), None)
        if tag is None:
            raise Abort(_json({"message": "404 Tag Not Found"}, 404))
        return _json(tag)

    def _get_commit(self, request: Request, project: _Project, sha: str) -> Response:
        resolved = self._resolve(project, sha)
        if resolved is None:
            raise Abort(_json({"message": "404 Commit Not Found"}, 404))
        return _json(self._commit_json(request, project, resolved))

    def _archive(self, request: Request, project: _Project, fmt: str = "tar.gz") -> Response:
        ref = request.args.get("sha") or project.repo.branch
        sha = self._resolve(project, ref)
        if sha is None:
            raise Abort(_json({"message": "404 File Not Found"}, 404))
        git_format, content_type = _ARCHIVE_FORMATS[fmt]
        stem = f"{project.path}-{ref.replace('/', '-')}-{sha}"
        data = subprocess.run(
            ["git", "archive", f"--format={git_format}", f"--prefix={stem}/", sha],
            cwd=project.repo.bare, capture_output=True, check=True).stdout
        return Response(data, 200, content_type=content_type, headers={
            "Content-Disposition": f'attachment; filename="{stem}.{fmt}"',
            "Content-Transfer-Encoding": "binary"})

    # -- reading the repository --------------------------------------------------------

    def _refs(self, project: _Project, prefix: str) -> dict[str, str]:
        out = project.git("for-each-ref", "--format=%(refname)%00%(objectname)", prefix)
        refs = dict(line.split("\0") for line in out.splitlines() if line)
        return {name[len(prefix):]: sha for name, sha in refs.items()}

    def _tags(self, request: Request, project: _Project) -> list[dict]:
        fmt = ("%(refname:strip=2)%00%(objectname)%00%(objecttype)%00%(*objectname)%00"
               "%(taggerdate:iso-strict)%00%(contents)%1e")
        out = project.git("for-each-ref", f"--format={fmt}", "refs/tags/")
        tags = []
        for record in out.split("\x1e"):
            record = record.lstrip("\n")
            if not record:
                continue
            name, obj, kind, peeled, date, message = record.split("\0")
            annotated = kind == "tag"
            commit = peeled if annotated else obj
            tags.append({
                "name": name, "message": message.strip() if annotated else "", "target": obj,
                "commit": self._commit_json(request, project, commit), "release": None,
                "protected": False, "created_at": date if annotated else None,
            })
        return tags

    def _resolve(self, project: _Project, ref: str) -> str | None:
        out = project.git("rev-parse", "--verify", "--quiet", "--end-of-options",
                          f"{ref}^{{commit}}", check=False)
        return out or None

    def _commit_json(self, request: Request, project: _Project, sha: str) -> dict:
        cached = project.commits.get(sha)
        if cached is None:
            fmt = "%H%x00%s%x00%B%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%P"
            fields = project.git("show", "-s", f"--format={fmt}", sha).split("\0")
            full, title, body, an, ae, ad, cn, ce, cd, parents = fields
            cached = {
                "id": full, "short_id": full[:8], "created_at": cd, "parent_ids": parents.split(),
                "title": title, "message": body, "author_name": an, "author_email": ae,
                "authored_date": ad, "committer_name": cn, "committer_email": ce,
                "committed_date": cd, "trailers": {}, "extended_trailers": {},
                "web_url": f"{self._web_url(request, project)}/-/commit/{full}",
            }
            project.commits[sha] = cached
        return cached

    def _branch_json(self, request: Request, project: _Project, name: str, sha: str) -> dict:
        default = name == project.repo.branch
        return {"name": name, "commit": self._commit_json(request, project, sha), "merged": False,
                "protected": default, "developers_can_push": False,
                "developers_can_merge": False, "can_push": True, "default": default,
                "web_url": f"{self._web_url(request, project)}/-/tree/{quote(name)}"}

    def _project_json(self, request: Request, project: _Project) -> dict:
        web = self._web_url(request, project)
        empty = not self._refs(project, "refs/heads/")
        ns = project.namespace
        return {
            "id": project.id, "description": None, "name": project.path,
            "name_with_namespace": project.path_with_namespace.replace("/", " / "),
            "path": project.path, "path_with_namespace": project.path_with_namespace,
            "created_at": project.created_at,
            "default_branch": None if empty else project.repo.branch, "tag_list": [], "topics": [],
            "ssh_url_to_repo": f"git@127.0.0.1:{project.path_with_namespace}.git",
            "http_url_to_repo": f"{web}.git", "web_url": web, "readme_url": None,
            "avatar_url": None, "forks_count": 0, "star_count": 0, "last_activity_at": _now(),
            "namespace": {"id": 1, "name": ns, "path": ns.rsplit("/", 1)[-1], "kind": "group",
                          "full_path": ns, "parent_id": None, "avatar_url": None,
                          "web_url": f"{request.host_url.rstrip('/')}/groups/{ns}"},
            "visibility": project.visibility, "empty_repo": empty, "archived": False,
        }

    @staticmethod
    def _web_url(request: Request, project: _Project) -> str:
        return f"{request.host_url.rstrip('/')}/{project.path_with_namespace}"

    # -- events ------------------------------------------------------------------------

    def _sync_events(self, project: _Project) -> None:
        """Record one push event per ref that changed since the last look (lock held)."""
        out = project.git("for-each-ref", "--format=%(refname)%00%(objectname)",
                          "refs/heads/", "refs/tags/")
        now = dict(line.split("\0") for line in out.splitlines() if line)
        before = project.refs
        for ref in sorted(set(before) | set(now)):
            old, new = before.get(ref), now.get(ref)
            if old != new:
                project.events.append(self._push_event(project, ref, old, new))
        project.refs = now

    def _push_event(self, project: _Project, ref: str, old: str | None, new: str | None) -> dict:
        is_tag = ref.startswith("refs/tags/")
        name = ref.split("/", 2)[2]
        if old is None:
            action_name, action = "pushed new", "created"
        elif new is None:
            action_name, action = "deleted", "removed"
        else:
            action_name, action = "pushed to", "pushed"
        count, title = 0, None
        if new is not None:
            title = project.git("log", "-1", "--format=%s", new)
            if not is_tag:
                span = f"{old}..{new}" if old else new
                count = int(project.git("rev-list", "--count", span, check=False) or 0)
        return {
            "id": next(self._event_ids), "project_id": project.id, "action_name": action_name,
            "target_id": None, "target_iid": None, "target_type": None, "author_id": _AUTHOR["id"],
            "target_title": None, "created_at": _now(), "author": _AUTHOR,
            "imported": False, "imported_from": "none",
            "push_data": {"commit_count": count, "action": action,
                          "ref_type": "tag" if is_tag else "branch", "commit_from": old,
                          "commit_to": new, "ref": name, "commit_title": title, "ref_count": None},
            "author_username": _AUTHOR["username"],
        }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers=headers, content_type="application/json")


def _fault_response(status: int, retry_after: float | None) -> Response:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
    if status == 429:
        return Response("Retry later\n", 429, headers=headers, content_type="text/plain")
    message = f"{status} Service Unavailable" if status == 503 else f"{status} Error"
    return _json({"message": message}, status, headers)


def _paginated(request: Request, items: list[Any]) -> Response:
    """One page of ``items`` with GitLab's offset-pagination headers."""
    try:
        page = max(1, int(request.args.get("page", 1)))
        per_page = min(100, max(1, int(request.args.get("per_page", 20))))
    except ValueError:
        return _json({"error": "page is invalid"}, 400)
    total = len(items)
    pages = max(1, -(-total // per_page))
    chunk = items[(page - 1) * per_page: page * per_page]
    base = request.host_url.rstrip("/") + request.environ["double.raw_path"]

    def page_url(n: int) -> str:
        args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "per_page")]
        return f"{base}?{urlencode(args + [('page', n), ('per_page', per_page)])}"

    links = []
    if page > 1:
        links.append(f'<{page_url(page - 1)}>; rel="prev"')
    if page < pages:
        links.append(f'<{page_url(page + 1)}>; rel="next"')
    links += [f'<{page_url(1)}>; rel="first"', f'<{page_url(pages)}>; rel="last"']
    headers = {
        "X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(total),
        "X-Total-Pages": str(pages), "X-Next-Page": str(page + 1) if page < pages else "",
        "X-Prev-Page": str(page - 1) if page > 1 else "", "Link": ", ".join(links),
    }
    return _json(chunk, headers=headers)
