"""Fleet views and rollout control: ``/api/v1/fleet``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from poller.api import error, json_body, read_access, require_token, services

blueprint = Blueprint("fleet", __name__)


def _state():
    from poller.fleet import open_state

    return open_state(services().config.fleet)


@blueprint.get("/api/v1/fleet")
@read_access
def views():
    from poller.fleet import snapshot

    return jsonify(snapshot(_state()))


@blueprint.get("/api/v1/fleet/<view>")
@read_access
def view(view: str):
    state = _state()
    if view not in ("current", "staging", "deploy"):
        return error(404, "not_found", "views: current, staging, deploy")
    return jsonify(getattr(state, view)())


@blueprint.post("/api/v1/fleet/rollouts")
@require_token
def start():
    """``{"service": S, "version": V}`` or ``{"services": {S: V, ...}}`` (one deploy queue)."""
    body = json_body(required=True)
    versions = body.get("services") or {body.get("service"): body.get("version")}
    if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in versions.items()):
        return error(400, "bad_request", "give 'service' and 'version', or 'services': {name: version}")
    started = _state().start_rollouts(versions, reason=str(body.get("reason") or "api"))
    return jsonify({s: ro.as_dict() for s, ro in started.items()}), 201


@blueprint.post("/api/v1/fleet/rollouts/<service>/<action>")
@require_token
def control(service: str, action: str):
    if action not in ("pause", "resume", "abort"):
        return error(404, "not_found", "actions: pause, resume, abort")
    return jsonify(getattr(_state(), action)(service).as_dict())
