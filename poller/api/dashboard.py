"""The dashboard: one server-rendered page, refreshed in place by a small script.

``GET /dashboard`` renders every section (sources, builds, images, deployments and approvals,
helmsman runs, fleet) from the store and the config; ``GET /dashboard/sections`` renders the
same sections alone, and the page's script swaps them in every few seconds. A running
build's log comes from :class:`LiveLogs` (fed by the pipeline while the build runs) through
``GET /dashboard/builds/<id>/log``; a finished build's log from the store. Approve / Reject
POST to ``/api/v1/approvals/<id>/approve|reject`` with the token the user types once (kept in
``sessionStorage``). Reading needs the token too unless ``api.public_read``; the page then
loads as an empty shell and fetches the sections with the token. No build tooling: the
template, one stylesheet and one script ship as they are.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template

from poller.api import can_read, error, read_access, runtime
from poller.approvals import ApprovalQueue
from poller.events import BuildStarted, EventBus
from poller.httpapi import configured_secret
from poller.humanize import ago, took
from poller.logs import get_logger

blueprint = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/dashboard/static")
log = get_logger(__name__)

#: Characters of a running build's log kept in memory per build.
LIVE_LOG_LIMIT = 256 * 1024


class LiveLogs:
    """The logs of running builds, in memory, by build id (the store gets them at the end).

    :meth:`subscribe` it to the event bus and pass :meth:`on_log` as (part of) the pipeline's
    ``on_build_log``: ``BuildStarted`` names the build id of a (source, ref), and the log lines
    of that (source, ref) then go to that id.
    """

    def __init__(self, keep: int = 32, limit: int = LIVE_LOG_LIMIT):
        self.keep, self.limit = keep, limit
        self._by_key: dict[tuple[str, str], int] = {}
        self._logs: OrderedDict[int, list[str]] = OrderedDict()
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(BuildStarted, self.on_started)

    def on_started(self, e: BuildStarted) -> None:
        with self._lock:
            bid = int(e.build_id)
            self._by_key[(e.source, e.ref)] = bid
            self._logs[bid], self._sizes[bid] = [], 0
            while len(self._logs) > self.keep:
                old, _ = self._logs.popitem(last=False)
                self._sizes.pop(old, None)

    def on_log(self, plan: Any, text: str) -> None:
        with self._lock:
            bid = self._by_key.get((plan.source, plan.ref))
            if bid is None or bid not in self._logs:
                return
            chunks = self._logs[bid]
            chunks.append(text)
            self._sizes[bid] += len(text)
            while self._sizes[bid] > self.limit and len(chunks) > 1:
                self._sizes[bid] -= len(chunks.pop(0))

    def get(self, build_id: int) -> str | None:
        with self._lock:
            chunks = self._logs.get(build_id)
            return None if chunks is None else "".join(chunks)


def tee(*callbacks):
    """One ``on_build_log`` that calls each of ``callbacks`` (``None`` ones skipped)."""
    live = [c for c in callbacks if c is not None]

    def on_log(plan, text: str) -> None:
        for cb in live:
            cb(plan, text)
    return on_log


# -- data --------------------------------------------------------------------------------------
def _sources(svc) -> list[dict]:
    seen = {s["name"]: s for s in svc.store.sources()}
    out = []
    for s in svc.config.sources:
        st = seen.get(s.name, {})
        tags = st.get("tags") or {}
        out.append({"name": s.name, "kind": s.kind, "branch": s.branch, "image": s.image,
                    "head": (st.get("head") or "")[:12] or "-",
                    "tags": sorted(tags)[-5:], "tag_count": len(tags),
                    "last_poll": ago(st.get("last_poll")), "error": st.get("last_error")})
    return out


def _builds(svc, limit: int = 30) -> tuple[list[dict], list[dict]]:
    running: list[dict] = []
    recent: list[dict] = []
    for b in svc.store.builds(limit=limit):
        d = b.as_dict()
        d["sha12"] = b.sha[:12]
        d["when"] = ago(b.started_at)
        d["took"] = took(b.duration if b.duration is not None else
                              (time.time() - b.started_at if b.status == "running" else None))
        (running if b.status == "running" else recent).append(d)
    return running, recent


def _images(svc, limit: int = 200) -> list[dict]:
    images: dict[str, dict[str, dict]] = {}
    for b in svc.store.builds(limit=limit):
        if b.status != "succeeded":
            continue
        tags = images.setdefault(b.image, {})
        for tag in b.tags:
            tags.setdefault(tag, {"tag": tag, "digest": b.digest or "", "sha12": b.sha[:12],
                                  "when": ago(b.finished_at), "build_id": b.id})
    return [{"image": image, "tags": list(tags.values())} for image, tags in sorted(images.items())]


def _updates(svc) -> dict | None:
    if not getattr(svc.config.updates, "deployments", None):
        return None
    try:
        from poller.updater.status import updates_status

        return updates_status(svc.config, svc.store, limit=10)
    except Exception as exc:  # noqa: BLE001 - another domain's trouble must not take the page down
        return {"error": f"{type(exc).__name__}: {exc}"}


_HELM_CACHE: dict[str, tuple[float, dict]] = {}
_HELM_LOCK = threading.Lock()


def _helm_runs(svc) -> dict | None:
    """``GET <charts.helm_api.url>/jobs``, cached for a few seconds; an error when it is down."""
    helm = svc.config.charts.helm_api
    if helm is None:
        return None
    now = time.monotonic()
    with _HELM_LOCK:
        hit = _HELM_CACHE.get(helm.url)
        if hit and now - hit[0] < 5.0:
            return hit[1]
    from poller.http import make_session
    from poller.http import request as http_request

    token = configured_secret(helm.token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = http_request(make_session("helm_api", timeout=(1.0, 2.0)), "GET",
                            helm.url.rstrip("/") + "/jobs?limit=20", upstream="helm_api",
                            headers=headers)
        body = resp.json()
        result = {"jobs": body.get("jobs") or [], "queued": body.get("queued")}
    except Exception as exc:  # noqa: BLE001 - a boundary: logged, never raised further
        result = {"error": f"helm API unreachable: {exc}", "jobs": []}
    with _HELM_LOCK:
        _HELM_CACHE[helm.url] = (now, result)
    return result


def _context() -> dict:
    svc = runtime()
    running, recent = _builds(svc)
    return {
        "sources": _sources(svc),
        "running": running,
        "recent": recent,
        "images": _images(svc),
        "approvals": [a.__dict__ for a in ApprovalQueue(svc.store).list()],
        "updates": _updates(svc),
        "helm": _helm_runs(svc),
        "fleet_enabled": "fleet" in current_app.blueprints and bool(
            getattr(getattr(svc.config, "fleet", None), "services", None)),
        "can_act": configured_secret(svc.config.api.token) is not None,
        "ago": ago,
    }


def _readable() -> bool:
    return can_read()


# -- routes ------------------------------------------------------------------------------------
@blueprint.get("/")
def root():
    return redirect("/dashboard", code=302)


@blueprint.get("/dashboard")
def page():
    ctx = _context() if _readable() else None
    return render_template("dashboard.html", ctx=ctx, public_read=runtime().config.api.public_read)


@blueprint.get("/dashboard/sections")
@read_access
def sections():
    return render_template("_sections.html", ctx=_context())


@blueprint.get("/dashboard/builds/<id:build_id>/log")
@read_access
def build_log(build_id: int):
    svc = runtime()
    rec = svc.store.get_build(build_id)
    if rec is None:
        return error(404, "not_found", f"no build {build_id}")
    text = rec.log
    live = svc.live_logs
    if rec.status == "running" and live is not None:
        text = live.get(build_id) or ""
    resp = Response(text, mimetype="text/plain")
    resp.headers["X-Build-Status"] = rec.status
    resp.headers["Cache-Control"] = "no-store"
    return resp
