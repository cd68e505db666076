"""Rollback routes: ``POST /api/v1/rollbacks/<service>`` (staging or production, dry run),
``POST /api/v1/rollbacks/<service>/unpin``, ``GET /api/v1/rollbacks``."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from poller.api import body_as, error, read_access, require_token, run_now, runtime
from poller.api.models import Actor, RollbackRequest
from poller.errors import NotFound
from poller.rollback import PRODUCTION, Rollbacks, staging_holds

blueprint = Blueprint("rollbacks", __name__)


def _rollbacks() -> Rollbacks:
    # the runtime's registry client and sources: the running pipeline's own
    return runtime().rollbacks()


def _known(service: str):
    if not any(s.name == service for s in runtime().config.sources):
        return error(404, "not_found", f"no source named {service!r} in sources")
    return None


@blueprint.get("/api/v1/rollbacks")
@read_access
def rollbacks():
    store = runtime().store
    return jsonify({"holds": staging_holds(store),
                    "recent": list(store.events(kind="rollback", limit=50))})


@blueprint.post("/api/v1/rollbacks/<service>")
@require_token
def rollback(service: str):
    body = body_as(RollbackRequest, required=True)
    missing = _known(service)
    if missing:
        return missing
    by = body.by or getattr(g, "actor", "api")
    rb = _rollbacks()
    try:
        if body.env == PRODUCTION:
            plan = rb.production(service, to=body.to, reason=body.reason, by=by,
                                 dry_run=body.dry_run)
        else:
            plan = rb.staging(service, to=body.to, reason=body.reason, by=by,
                              dry_run=body.dry_run)
    except NotFound as exc:
        return error(404, "not_found", str(exc))
    if plan.done and body.env == PRODUCTION:  # the leader builds the new release tag now
        run_now(f"source:{service}")
    return jsonify(plan.as_dict())


@blueprint.post("/api/v1/rollbacks/<service>/unpin")
@require_token
def unpin(service: str):
    body = body_as(Actor)
    missing = _known(service)
    if missing:
        return missing
    released = _rollbacks().unpin(service, by=body.by or getattr(g, "actor", "api"))
    if released:  # staging follows the branch head again: the leader moves it now
        run_now(f"source:{service}")
    return jsonify({"service": service, "released": released})
