"""Updater routes: tracked images and deployments, update history, pins, rollout control.

Approve/reject of a pending update is the generic ``/api/v1/approvals/<id>/approve|reject``.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from poller.api import body_as, error, read_access, require_token, run_now, runtime
from poller.api.models import Actor, Pin
from poller.httpapi import query_int
from poller.rollout.control import NoActiveRollout, RolloutControl
from poller.updater.history import UpdateHistory
from poller.updater.status import updates_status

blueprint = Blueprint("updates", __name__)


def _deployment_or_404(name: str):
    if runtime().config.updates.deployment(name) is None:
        return error(404, "not_found", f"no deployment named {name!r} in updates.deployments")
    return None


def _who(body: Actor | Pin) -> str:
    return str(body.by or getattr(g, "actor", "api"))


@blueprint.get("/api/v1/updates")
@read_access
def status():
    limit = query_int("limit", 20, minimum=1, maximum=500)
    svc = runtime()
    return jsonify(updates_status(svc.config, svc.store, limit=limit))


@blueprint.get("/api/v1/updates/history")
@read_access
def history():
    limit = query_int("limit", 50, minimum=1, maximum=500)
    items = UpdateHistory(runtime().store).list(deployment=request.args.get("deployment"), limit=limit)
    return jsonify([u.__dict__ for u in items])


@blueprint.post("/api/v1/updates/deployments/<name>/pin")
@require_token
def pin(name: str):
    missing = _deployment_or_404(name)
    if missing:
        return missing
    body = body_as(Pin, required=True)
    version = body.version
    UpdateHistory(runtime().store).pin(name, version, by=_who(body))
    run_now("updates")
    return jsonify({"deployment": name, "pinned": version})


@blueprint.post("/api/v1/updates/deployments/<name>/unpin")
@require_token
def unpin(name: str):
    missing = _deployment_or_404(name)
    if missing:
        return missing
    removed = UpdateHistory(runtime().store).unpin(name, by=_who(body_as(Actor)))
    run_now("updates")
    return jsonify({"deployment": name, "unpinned": removed})


@blueprint.post("/api/v1/updates/deployments/<name>/rollout/<action>")
@require_token
def rollout(name: str, action: str):
    missing = _deployment_or_404(name)
    if missing:
        return missing
    control = RolloutControl(runtime().store)
    fn = {"pause": control.pause, "resume": control.resume, "abort": control.abort}.get(action)
    if fn is None:
        return error(404, "not_found", "use /pause, /resume or /abort")
    try:
        rec = fn(name, by=_who(body_as(Actor)))
    except NoActiveRollout as exc:
        return error(409, "no_active_rollout", str(exc))
    run_now("updates")  # the rollout goes on (or stops) at once, on the leader
    return jsonify(rec.__dict__)
