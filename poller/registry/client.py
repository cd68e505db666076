"""A Docker Registry HTTP API v2 client: just what reconciling needs.

* ``HEAD`` a manifest to learn a tag's digest (one request, no body).
* List tags, following ``Link`` pagination.
* Read an image's labels (manifest -> config blob), cached by digest: content-addressed
  data never changes, so this cache is not state, only saved requests.
* Put an existing manifest under another tag (re-tag without rebuilding or re-pushing).

Authentication: basic credentials, and the bearer-token flow (``WWW-Authenticate: Bearer
realm=...,service=...,scope=...``) with tokens cached per scope. Failures become
:class:`~poller.errors.UpstreamError` (429/5xx, with ``Retry-After``) or permanent errors.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urljoin

import requests

from poller.config import RegistryConfig
from poller.errors import AuthError, NotFound, ResponseTooLarge, UpstreamError
from poller.http import RequestCounter, check_response, make_session

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX_TYPES = MANIFEST_TYPES[:2]
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
#: Most tags read from one repository (all pages together); more is the registry's failure.
MAX_TAGS = 100_000


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    raw: bytes

    @property
    def body(self) -> dict:
        return json.loads(self.raw)


class RegistryClient:
    def __init__(self, cfg: RegistryConfig, *, session: requests.Session | None = None,
                 counter: RequestCounter | None = None, max_concurrency: int = 8,
                 cache_size: int = 4096):
        self.cfg = cfg
        self.upstream = f"registry:{cfg.host}"
        self.base = cfg.base_url
        self.session = session or make_session(self.upstream, counter=counter)
        self._limit = threading.BoundedSemaphore(max_concurrency)
        self._tokens: dict[str, str] = {}
        self._labels: OrderedDict[str, dict] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # -- transport ------------------------------------------------------------------
    def _basic(self) -> tuple[bytes, bytes] | None:
        # As UTF-8 bytes: requests would encode str credentials as latin-1 and fail on any
        # other character (a password with 'ü' or '✓' crashed every poll).
        if self.cfg.username and self.cfg.password:
            return (self.cfg.username.encode(), self.cfg.password.get_secret_value().encode())
        return None

    def _send(self, method: str, path: str, *, scope: str, headers: dict | None = None,
              data: bytes | None = None, allow_redirects: bool = True) -> requests.Response:
        url = urljoin(self.base + "/", path.lstrip("/"))
        headers = dict(headers or {})
        with self._limit:
            for attempt in range(2):
                token = self._tokens.get(scope)
                auth = None
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                elif self._basic():
                    auth = self._basic()
                try:
                    resp = self.session.request(method, url, headers=headers, data=data, auth=auth,  # type: ignore[arg-type]
                                                allow_redirects=allow_redirects)
                except requests.RequestException as exc:
                    raise UpstreamError(f"{self.upstream}: {method} {path} failed: "
                                        f"{type(exc).__name__}", upstream=self.upstream) from exc
                if resp.status_code == 401 and attempt == 0:
                    challenge = resp.headers.get("WWW-Authenticate", "")
                    if challenge.lower().startswith("bearer"):
                        self._fetch_token(challenge, scope)
                        continue
                    if challenge.lower().startswith("basic") and not self._basic():
                        raise AuthError(f"{self.upstream} wants credentials; set registry.username/password")
                return resp
        return resp  # pragma: no cover - loop always returns

    def _fetch_token(self, challenge: str, scope: str) -> None:
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise AuthError(f"{self.upstream}: bearer challenge without realm")
        query = {"service": params.get("service", ""), "scope": scope}
        try:
            resp = self.session.get(realm, params=query, auth=self._basic())  # type: ignore[arg-type]
        except requests.RequestException as exc:
            raise UpstreamError(f"{self.upstream}: token endpoint failed: {type(exc).__name__}",
                                upstream=self.upstream) from exc
        check_response(resp, self.upstream + ":token")
        body = self._json(resp, dict, "token endpoint")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise AuthError(f"{self.upstream}: token endpoint returned no token")
        self._tokens[scope] = token

    @staticmethod
    def _pull(repo: str) -> str:
        return f"repository:{repo}:pull"

    # -- reads ----------------------------------------------------------------------
    def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest ``ref`` (tag or digest) points at, or ``None`` when it does not exist."""
        resp = self._send("HEAD", f"/v2/{repo}/manifests/{ref}", scope=self._pull(repo),
                          headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if resp.status_code == 404:
            return None
        check_response(resp, self.upstream)
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            # Some registries omit it on HEAD; a GET always lets us compute it.
            return self.get_manifest(repo, ref).digest
        return digest

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        resp = self._send("GET", f"/v2/{repo}/manifests/{ref}", scope=self._pull(repo),
                          headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if resp.status_code == 404:
            raise NotFound(f"{self.upstream}: {repo}:{ref} does not exist")
        check_response(resp, self.upstream)
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            import hashlib

            digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
        media_type = resp.headers.get("Content-Type", "").split(";")[0] or \
            str(self._json(resp, dict, f"{repo}:{ref}").get("mediaType", ""))
        return Manifest(digest=digest, media_type=media_type, raw=resp.content)

    def labels(self, repo: str, digest: str, depth: int = 0) -> dict[str, str]:
        """Labels of the image at ``digest`` (for an index: its linux/amd64 entry)."""
        with self._lock:
            if digest in self._labels:
                self._labels.move_to_end(digest)
                return self._labels[digest]
        manifest = self.get_manifest(repo, digest)
        try:
            labels = self._labels_of(repo, manifest, depth)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"{self.upstream}: {repo}@{digest}: malformed manifest or image "
                                f"config ({type(exc).__name__})", upstream=self.upstream) from None
        with self._lock:
            self._labels[digest] = labels
            while len(self._labels) > self._cache_size:
                self._labels.popitem(last=False)
        return labels

    def _labels_of(self, repo: str, manifest: Manifest, depth: int) -> dict[str, str]:
        body = manifest.body
        if manifest.media_type in _INDEX_TYPES or "manifests" in body:
            chosen = next((m for m in body.get("manifests", [])
                           if m.get("platform", {}).get("os") == "linux"
                           and m.get("platform", {}).get("architecture") == "amd64"),
                          (body.get("manifests") or [None])[0])
            if chosen is None or depth >= 2:  # an index of indexes of indexes is no image
                return {}
            return self.labels(repo, chosen["digest"], depth + 1)
        config_digest = body.get("config", {}).get("digest")
        if not config_digest:
            return {}
        resp = self._send("GET", f"/v2/{repo}/blobs/{config_digest}", scope=self._pull(repo))
        check_response(resp, self.upstream)
        labels = (resp.json().get("config") or {}).get("Labels") or {}
        if not isinstance(labels, dict):
            raise TypeError("Labels is not an object")
        return {str(k): str(v) for k, v in labels.items()}

    def _json(self, resp: requests.Response, kind: type, what: str):
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, kind):
            raise UpstreamError(f"{self.upstream}: {what}: expected a JSON {kind.__name__}",
                                upstream=self.upstream)
        return data

    def list_tags(self, repo: str, *, page_size: int = 1000) -> list[str]:
        """Every tag of ``repo``, following ``Link: <...>; rel="next"`` pagination."""
        tags: list[str] = []
        path: str | None = f"/v2/{repo}/tags/list?n={page_size}"
        pages = 0
        while path:
            pages += 1
            if pages > MAX_TAGS // page_size + 10:  # endless (or empty) pages are no tag list
                raise ResponseTooLarge(f"{self.upstream}: {repo} tags: more than {pages - 1} pages",
                                       upstream=self.upstream)
            resp = self._send("GET", path, scope=self._pull(repo))
            if resp.status_code == 404:
                return tags  # no such repository yet: nothing pushed
            check_response(resp, self.upstream)
            page = self._json(resp, dict, f"{repo} tags").get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise UpstreamError(f"{self.upstream}: {repo} tags: expected a list of strings",
                                    upstream=self.upstream)
            tags.extend(page)
            if len(tags) > MAX_TAGS:
                raise ResponseTooLarge(f"{self.upstream}: {repo} has more than {MAX_TAGS} tags",
                                       upstream=self.upstream)
            path = _next_link(resp.headers.get("Link"))
        return tags

    # -- writes ---------------------------------------------------------------------
    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> str:
        """Point ``tag`` at an existing manifest (no layers move). Returns the digest."""
        resp = self._send("PUT", f"/v2/{repo}/manifests/{tag}",
                          scope=f"repository:{repo}:pull,push",
                          headers={"Content-Type": manifest.media_type}, data=manifest.raw)
        check_response(resp, self.upstream)
        return resp.headers.get("Docker-Content-Digest", manifest.digest)


def _next_link(link: str | None) -> str | None:
    if not link:
        return None
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return m.group(1) if m else None
