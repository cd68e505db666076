"""Instant triggers: webhook receivers for GitLab, GitHub and the registry's notifications.

A valid event reconciles the source (or image) it names at once; polling stays the safety net,
so a lost or refused delivery costs at most one poll interval.

* ``POST /hooks/gitlab``: ``X-Gitlab-Token`` must equal ``api.gitlab_webhook_token`` (compared
  in constant time). Push and tag push events (``object_kind`` ``push`` / ``tag_push``) match
  the configured sources by GitLab project path or id, or by the repository's clone URLs.
* ``POST /hooks/github``: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw
  body under ``api.github_webhook_secret``. Both content types GitHub sends are accepted:
  ``application/json`` and ``application/x-www-form-urlencoded`` (``payload=<JSON>``, the
  default of a hook created without ``content_type``); the signature covers the raw body either
  way. ``push`` and ``create`` events match sources by ``owner/name`` or clone URL; ``ping`` is
  answered 200.
* ``POST /hooks/registry``: the registry's notification envelope (``{"events": [...]}``) with
  ``Authorization: Bearer <api.registry_webhook_token>``. Manifest pushes on a watched image
  (a source's image or a deployment's) trigger the updater's job (``updates``; also
  ``updates:<deployment>`` / ``image:<image>`` when a domain schedules such jobs) when one is
  scheduled, and are recorded as ``registry.push`` events in the store either way.

A wrong or missing secret is 401 and changes nothing; a receiver whose secret is not
configured, or configured empty, is 403 (disabled, never open). Malformed JSON is 400. Each delivery id
(``X-Gitlab-Event-UUID``, ``X-GitHub-Delivery``, the registry event ids) is remembered in a
bounded memory and a replay is answered ``duplicate: true`` without acting; reconciling is
idempotent anyway, so a replay that got past the memory (after a restart) is harmless too.
An event for nothing configured is ``202`` with ``matched: []``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Blueprint, current_app, jsonify, request

from poller.api import error, runtime
from poller.httpapi import (
    ApiError,
    bearer_token,
    configured_secret,
    parse_json,
    secret_matches,
)
from poller.logs import get_logger

blueprint = Blueprint("webhooks", __name__)
log = get_logger(__name__)

#: How many delivery ids each process remembers for replay detection.
DELIVERY_MEMORY = 2048


class DeliveryMemory:
    """A bounded, thread-safe set of recently seen delivery ids (oldest forgotten first)."""

    def __init__(self, size: int = DELIVERY_MEMORY):
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        """Remember ``key``; True when it was not already remembered."""
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


def _memory() -> DeliveryMemory:
    return current_app.extensions.setdefault("slipway.webhook_deliveries", DeliveryMemory())


# -- matching ------------------------------------------------------------------------------
def normalize_repo_url(url: str | None) -> str | None:
    """A comparable form of a clone or web URL: ``host/path`` without scheme, user, ``.git``.

    ``https://gitlab.example.com/games/lobby.git``, ``git@gitlab.example.com:games/lobby.git``
    and ``ssh://git@gitlab.example.com/games/lobby`` all become ``gitlab.example.com/games/lobby``;
    ``file:///srv/git/x.git`` becomes ``/srv/git/x``.
    """
    if not url or not isinstance(url, str):
        return None
    url = url.strip()
    scp = re.match(r"^(?:[^@/]+@)?([^:/]+):(?!//)(.+)$", url)
    if scp and "://" not in url:
        host, path = scp.group(1), scp.group(2)
    else:
        try:
            parts = urlsplit(url)
            host, path, port = (parts.hostname or ""), parts.path, parts.port
        except ValueError:  # a bad port or bracketed host: nothing can match it
            return None
        if port and parts.scheme not in ("ssh", "git+ssh"):
            host += f":{port}"
    path = path.rstrip("/")
    path = path.removesuffix(".git")
    path = "/" + path.lstrip("/")
    return (host.lower() + path) if host else path


def _path_suffix(url: str | None, path: str | None) -> bool:
    """True when the remote ``url`` ends with the project ``path`` (``group/name``)."""
    norm = normalize_repo_url(url)
    return bool(norm and path and norm.lower().endswith("/" + path.strip("/").lower()))


def _matching_sources(*, paths: Iterable[str], urls: Iterable[str | None],
                      kind: str, project_id: Any = None) -> list[str]:
    cfg = runtime().config
    paths = [p.strip("/") for p in paths if isinstance(p, str) and p.strip("/")]
    wanted = {u for u in (normalize_repo_url(u) for u in urls) if u}
    out = []
    for s in cfg.sources:
        hit = False
        if kind == "gitlab" and s.gitlab is not None:
            project = s.gitlab.project.strip("/")
            hit = (project.lower() in (p.lower() for p in paths)
                   or (project_id is not None and project == str(project_id)))
        elif kind == "github" and s.github is not None:
            hit = s.github.repo.lower() in (p.lower() for p in paths)
        if not hit and s.git is not None:
            hit = (normalize_repo_url(s.git.url) in wanted
                   or any(_path_suffix(s.git.url, p) for p in paths))
        if hit:
            out.append(s.name)
    return out


def _trigger_sources(names: list[str], reason: str) -> list[dict]:
    """Reconcile each source now: through the scheduler when it runs one, else in a thread."""
    svc = runtime()
    out = []
    for name in names:
        how = None
        if svc.scheduler is not None and svc.scheduler.trigger(f"source:{name}"):
            how = "scheduled"
        elif svc.pipeline is not None:
            pipeline = svc.pipeline
            threading.Thread(target=_reconcile_quietly, args=(pipeline, name),
                             name=f"webhook-{name}", daemon=True).start()
            how = "started"
        out.append({"source": name, "trigger": how or "unavailable"})
        log.info("webhook.trigger", source=name, reason=reason, how=how or "unavailable")
    return out


def _reconcile_quietly(pipeline, name: str) -> None:
    try:
        pipeline.reconcile_source(name, force=True)
    except Exception as exc:  # noqa: BLE001 - a webhook thread must never die loudly
        log.error("webhook.reconcile_failed", source=name, error=repr(exc))


# -- request plumbing ----------------------------------------------------------------------
def _secret(attr: str) -> str | None:
    """The receiver's secret; None when unset or empty (the receiver is then disabled)."""
    return configured_secret(getattr(runtime().config.api, attr, None))


def _disabled(name: str):
    return error(403, "disabled", f"the {name} webhook is not configured (api.{name}_webhook_*)")


def _unauthorized(what: str):
    log.warning("webhook.refused", receiver=what, remote=request.remote_addr)
    resp = error(401, "unauthorized", f"the {what} webhook secret or signature is wrong or missing")
    resp.headers.pop("WWW-Authenticate", None)
    return resp


def _payload() -> tuple[dict | None, Any]:
    """The raw body parsed as a JSON object, or ``(None, 400 response)``.

    A form-encoded body (``payload=<url-encoded JSON>``, how GitHub sends a hook created with
    the default content type) is unwrapped first."""
    raw = request.get_data(cache=True) or b""
    if request.mimetype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode("utf-8"), strict_parsing=True, max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            form = {}
        if len(form.get("payload", [])) != 1:
            return None, error(400, "bad_request",
                               "a form-encoded delivery carries one 'payload' field")
        raw = form["payload"][0].encode("utf-8")
    try:
        data = parse_json(raw)
    except ApiError as exc:
        return None, error(exc.status, exc.code, exc.message)
    if not isinstance(data, dict):
        return None, error(400, "bad_request", "the body must be a JSON object")
    return data, None


def _duplicate(receiver: str, delivery: str | None):
    if delivery and not _memory().first_time(f"{receiver}:{delivery}"):
        log.info("webhook.duplicate", receiver=receiver, delivery=delivery)
        return jsonify({"duplicate": True, "delivery": delivery, "matched": []}), 200
    return None


def _ref_of(ref: Any) -> str | None:
    return ref if isinstance(ref, str) else None


# -- GitLab --------------------------------------------------------------------------------
@blueprint.post("/hooks/gitlab")
def gitlab_hook():
    secret = _secret("gitlab_webhook_token")
    if secret is None:
        return _disabled("gitlab")
    if not secret_matches(request.headers.get("X-Gitlab-Token"), secret):
        return _unauthorized("gitlab")
    data, bad = _payload()
    if bad is not None:
        return bad
    kind = data.get("object_kind") or data.get("event_name")
    delivery = request.headers.get("X-Gitlab-Event-UUID")
    if kind not in ("push", "tag_push"):
        return jsonify({"ignored": True, "event": kind, "matched": []}), 202
    dup = _duplicate("gitlab", delivery)
    if dup is not None:
        return dup
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    repo = data.get("repository") if isinstance(data.get("repository"), dict) else {}
    paths = [project.get("path_with_namespace")]
    urls = [project.get(k) for k in ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "url")]
    urls += [repo.get(k) for k in ("git_http_url", "git_ssh_url", "homepage", "url")]
    names = _matching_sources(paths=paths, urls=urls, kind="gitlab",
                              project_id=data.get("project_id", project.get("id")))
    log.info("webhook.received", receiver="gitlab", kind=kind, ref=_ref_of(data.get("ref")),
             project=project.get("path_with_namespace"), delivery=delivery, matched=",".join(names))
    triggered = _trigger_sources(names, f"gitlab {kind} {data.get('ref')}")
    return jsonify({"event": kind, "delivery": delivery, "matched": names, "triggered": triggered}), 202


# -- GitHub --------------------------------------------------------------------------------
def github_signature(secret: str | bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@blueprint.post("/hooks/github")
def github_hook():
    secret = _secret("github_webhook_secret")
    if secret is None:
        return _disabled("github")
    body = request.get_data(cache=True)
    given = request.headers.get("X-Hub-Signature-256", "")
    if not secret_matches(given, github_signature(secret, body)):
        return _unauthorized("github")
    data, bad = _payload()
    if bad is not None:
        return bad
    event = request.headers.get("X-GitHub-Event", "")
    delivery = request.headers.get("X-GitHub-Delivery")
    if event == "ping":
        return jsonify({"pong": True, "zen": data.get("zen")}), 200
    if event not in ("push", "create"):
        return jsonify({"ignored": True, "event": event, "matched": []}), 202
    dup = _duplicate("github", delivery)
    if dup is not None:
        return dup
    repo = data.get("repository") if isinstance(data.get("repository"), dict) else {}
    urls = [repo.get(k) for k in ("clone_url", "ssh_url", "git_url", "html_url", "url", "svn_url")]
    names = _matching_sources(paths=[repo.get("full_name")], urls=urls, kind="github")
    log.info("webhook.received", receiver="github", kind=event, ref=_ref_of(data.get("ref")),
             repo=repo.get("full_name"), delivery=delivery, matched=",".join(names))
    triggered = _trigger_sources(names, f"github {event} {data.get('ref')}")
    return jsonify({"event": event, "delivery": delivery, "matched": names, "triggered": triggered}), 202


# -- registry ------------------------------------------------------------------------------
def _watched_images() -> dict[str, list[str]]:
    """Every image the config watches, mapped to the scheduler jobs that may care about it."""
    cfg = runtime().config
    images: dict[str, list[str]] = {}
    for s in cfg.sources:
        images.setdefault(s.image, [])
    for d in getattr(getattr(cfg, "updates", None), "deployments", None) or []:
        images.setdefault(d.image, []).extend(["updates", f"updates:{d.name}"])
    for image, jobs in images.items():
        jobs += [f"image:{image}", f"updates:{image}"]
    return images


def _image_for(repository: str, host: str | None) -> str | None:
    registry = runtime().config.registry
    registry_host = registry.host if registry is not None else None
    for image in _watched_images():
        img_host, _, img_repo = image.partition("/")
        if img_repo == repository and (img_host == host or img_host == registry_host):
            return image
    return None


@blueprint.post("/hooks/registry")
def registry_hook():
    secret = _secret("registry_webhook_token")
    if secret is None:
        return _disabled("registry")
    if not secret_matches(bearer_token(request.headers.get("Authorization")), secret):
        return _unauthorized("registry")
    data, bad = _payload()
    if bad is not None:
        return bad
    events = data.get("events")
    if not isinstance(events, list):
        return error(400, "bad_request", "a registry notification envelope has an 'events' list")
    svc = runtime()
    watched = _watched_images()
    matched: list[dict] = []
    duplicates = 0
    for ev in events:
        if not isinstance(ev, dict) or ev.get("action") != "push":
            continue
        target = ev.get("target") if isinstance(ev.get("target"), dict) else {}
        if "manifest" not in str(target.get("mediaType", "")) and not target.get("tag"):
            continue  # a layer upload: the manifest push that follows is what matters
        repository = target.get("repository")
        req = ev.get("request") if isinstance(ev.get("request"), dict) else {}
        image = _image_for(repository, req.get("host")) if isinstance(repository, str) else None
        if image is None:
            continue
        if ev.get("id") and not _memory().first_time(f"registry:{ev['id']}"):
            duplicates += 1
            continue
        jobs = []
        if svc.scheduler is not None:
            jobs = [j for j in dict.fromkeys(watched.get(image, [])) if svc.scheduler.trigger(j)]
        svc.store.record_event("registry.push", image, tag=target.get("tag"),
                               digest=target.get("digest"), event_id=ev.get("id"), triggered=jobs)
        log.info("webhook.received", receiver="registry", image=image, tag=target.get("tag"),
                 digest=target.get("digest"), triggered=",".join(jobs) or "none")
        matched.append({"image": image, "tag": target.get("tag"), "digest": target.get("digest"),
                        "triggered": jobs})
    return jsonify({"matched": matched, "duplicates": duplicates}), 202
