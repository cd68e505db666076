"""Core routes: health, status, builds, approvals, triggering a source."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from poller.api import body_as, error, read_access, require_token, run_now, runtime
from poller.api.models import Decision
from poller.approvals import STATUSES, ApprovalNotFound, ApprovalQueue
from poller.httpapi import query_choice, query_int

blueprint = Blueprint("core", __name__)


@blueprint.get("/healthz")
def healthz():
    return jsonify({"ok": True})


@blueprint.get("/metrics")
def metrics():
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)  # it names its charset


@blueprint.get("/api/v1/status")
@read_access
def status():
    svc = runtime()
    seen = {s["name"]: s for s in svc.store.sources()}
    return jsonify({
        "sources": [{"name": s.name, "kind": s.kind, "branch": s.branch, "image": s.image,
                     "head": seen.get(s.name, {}).get("head"),
                     "last_poll": seen.get(s.name, {}).get("last_poll"),
                     "last_error": seen.get(s.name, {}).get("last_error")} for s in svc.config.sources],
        "builds": [b.as_dict() for b in svc.store.builds(limit=20)],
        "approvals": [a.__dict__ for a in ApprovalQueue(svc.store).list()],
    })


@blueprint.get("/api/v1/builds")
@read_access
def builds():
    limit = query_int("limit", 50, minimum=1, maximum=500)
    return jsonify([b.as_dict() for b in runtime().store.builds(source=request.args.get("source"),
                                                                   limit=limit)])


@blueprint.get("/api/v1/builds/<id:build_id>")
@read_access
def build(build_id: int):
    rec = runtime().store.get_build(build_id)
    if rec is None:
        return error(404, "not_found", f"no build {build_id}")
    return jsonify(rec.as_dict(with_log=True))


@blueprint.get("/api/v1/approvals")
@read_access
def approvals():
    status = query_choice("status", "pending", (*STATUSES, "all"))
    return jsonify([a.__dict__ for a in ApprovalQueue(runtime().store).list(
        status=None if status == "all" else status)])


@blueprint.post("/api/v1/approvals/<id:approval_id>/<decision>")
@require_token
def decide(approval_id: int, decision: str):
    if decision not in ("approve", "reject"):
        return error(404, "not_found", "use /approve or /reject")
    body = body_as(Decision)
    who = body.by or getattr(g, "actor", "api")
    queue = ApprovalQueue(runtime().store)
    try:
        appr = queue.approve(approval_id, by=who) if decision == "approve" else queue.reject(approval_id, by=who)
    except ApprovalNotFound as exc:
        return error(404, "not_found", str(exc))
    if appr.status == "approved":  # the job that waits for it applies it now, on the leader
        run_now("updates" if appr.kind == "deployment" else f"charts:{appr.subject.split('/')[0]}")
    return jsonify(appr.__dict__)


@blueprint.post("/api/v1/sources/<name>/reconcile")
@require_token
def reconcile(name: str):
    svc = runtime()
    if name not in {s.name for s in svc.config.sources}:
        return error(404, "not_found", f"no source named {name!r}")
    if svc.scheduler is not None and svc.scheduler.trigger(f"source:{name}"):
        return jsonify({"source": name, "queued": True}), 202
    if svc.pipeline is not None:
        report = svc.pipeline.reconcile_source(name, force=True)
        return jsonify({"source": name, "error": report.error,
                        "actions": [a.as_dict() for a in report.actions]}), 202
    return error(503, "unavailable", "the pipeline is not running in this process")
