"""The helm API's routes: one blueprint, registered by :func:`helm_api.create_app`.

Views reach the app's parts (config, job runner, cluster client, metrics) through
:func:`parts`; errors of the tree are answered by the shared table (:mod:`poller.httpapi`).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from helm_api.jobs import JobNotFound
from helm_api.models import ApplyRequest, ApplyResponse, JobDetail, JobList, Status
from helm_api.openapi import openapi_document
from poller import httpapi
from poller.errors import UpstreamError
from poller.names import valid_dns_label

REALM = "helm-api"

blueprint = Blueprint("helm_api", __name__)


class HelmMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("helm_api_http_requests_total", "HTTP requests served",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("helm_api_http_request_duration_seconds", "time to answer",
                                 ["endpoint"], registry=self.registry)
        self.applies = Counter("helm_api_apply_total", "POST /apply outcomes",
                               ["environment", "outcome"], registry=self.registry)
        self.jobs = Counter("helm_api_jobs_created_total", "helmsman Jobs created",
                            ["environment", "trigger"], registry=self.registry)
        self.queued = Gauge("helm_api_follow_ups_queued", "follow-up runs waiting",
                            registry=self.registry)


def parts() -> dict[str, Any]:
    """``config``, ``runner``, ``kube`` and ``metrics`` of this app."""
    return current_app.extensions["helm_api"]


def _error(status: int, code: str, message: str, **extra) -> Response:
    return httpapi.error_response(status, code, message, realm=REALM, **extra)


# -- plumbing (every request of the app, unmatched ones too) ---------------------------------
@blueprint.before_app_request
def _start() -> None:
    g.started = time.perf_counter()


@blueprint.after_app_request
def _count(resp: Response) -> Response:
    metrics, runner = parts()["metrics"], parts()["runner"]
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    if endpoint == "/apply" and request.method == "POST" and resp.status_code >= 400:
        # Every failed apply is counted, by its error code (bad bodies, auth, cluster).
        body = resp.get_json(silent=True) or {}
        metrics.applies.labels(g.get("apply_env") or "",
                               str(body.get("error") or resp.status_code)).inc()
    metrics.requests.labels(request.method, endpoint, str(resp.status_code)).inc()
    metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
    metrics.queued.set(len(runner.pending()))
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


# -- routes -----------------------------------------------------------------------------------
@blueprint.post("/apply")
def apply():
    config, runner, metrics = parts()["config"], parts()["runner"], parts()["metrics"]
    httpapi.require_bearer(config.token)
    req = ApplyRequest.from_body(httpapi.json_object())
    named = req.environment if req.environment is not None else config.resolved_default_environment
    g.apply_env = named if named in config.environments else None
    result = runner.apply(req.environment, req.reason)
    metrics.applies.labels(result.environment, "created" if result.created else "queued").inc()
    answer = ApplyResponse(job=result.job, environment=result.environment,
                           created=result.created, follow_up_queued=result.follow_up_queued,
                           status_url=f"/jobs/{result.job}")
    return jsonify(answer.model_dump()), 202, {"Location": f"/jobs/{result.job}"}


@blueprint.get("/jobs")
def list_jobs():
    config, runner = parts()["config"], parts()["runner"]
    limit = httpapi.query_int("limit", config.jobs_limit, minimum=1, maximum=500)
    runner.tick()
    answer = JobList.model_validate({"jobs": runner.list_runs(limit), "queued": runner.pending()})
    return jsonify(answer.model_dump())


@blueprint.get("/jobs/<name>")
def get_job(name: str):
    if not valid_dns_label(name):
        raise JobNotFound(f"'{name}' is not a valid job name")
    return jsonify(JobDetail.model_validate(parts()["runner"].describe(name)).model_dump())


@blueprint.get("/healthz")
def healthz():
    return jsonify(Status(status="ok").model_dump())


@blueprint.get("/readyz")
def readyz():
    try:
        parts()["kube"].ready()
    except UpstreamError as exc:
        return _error(503, "not_ready", str(exc))
    return jsonify(Status(status="ok").model_dump())


@blueprint.get("/metrics")
def metrics_view():
    return Response(generate_latest(parts()["metrics"].registry), content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/openapi.json")
def openapi():
    config = parts()["config"]
    return jsonify(openapi_document(sorted(config.environments), config.resolved_default_environment))
