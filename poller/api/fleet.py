"""Fleet views and rollout control: ``/api/v1/fleet``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from poller.api import body_as, error, read_access, require_token, runtime
from poller.api.models import FleetRollout
from poller.httpapi import ApiError

blueprint = Blueprint("fleet", __name__)


def _state():
    rt = runtime()
    if not rt.config.fleet.services:
        raise ApiError(404, "fleet_not_configured", "no fleet is configured (fleet.services)")
    return rt.fleet


@blueprint.get("/api/v1/fleet")
@read_access
def views():
    from poller.fleet import snapshot

    return jsonify(snapshot(_state()))


@blueprint.get("/api/v1/fleet/<view>")
@read_access
def view(view: str):
    if view not in ("current", "staging", "deploy"):
        return error(404, "not_found", "views: current, staging, deploy")
    state = _state()
    return jsonify(getattr(state, view)())


@blueprint.post("/api/v1/fleet/rollouts")
@require_token
def start():
    """``{"service": S, "version": V}`` or ``{"services": {S: V, ...}}`` (one deploy queue)."""
    body = body_as(FleetRollout, required=True)
    started = _state().start_rollouts(body.versions(), reason=body.reason or "api")
    return jsonify({s: ro.as_dict() for s, ro in started.items()}), 201


@blueprint.post("/api/v1/fleet/rollouts/<service>/<action>")
@require_token
def control(service: str, action: str):
    if action not in ("pause", "resume", "abort"):
        return error(404, "not_found", "actions: pause, resume, abort")
    return jsonify(getattr(_state(), action)(service).as_dict())
