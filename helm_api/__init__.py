"""The helm API: start helmsman runs in the cluster, by hand or from the poller.

``create_app(config, kube)`` is the only way to build the Flask app; the entry points
(:mod:`helm_api.__main__`, :mod:`helm_api.wsgi`) read the environment and pass a config in.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from helm_api.config import HelmApiConfig
from helm_api.jobs import (
    CronJobInvalid,
    CronJobMissing,
    JobNotFound,
    JobRunner,
    UnknownEnvironment,
)
from helm_api.kube import Kube, api_client_from
from helm_api.models import ApplyRequest, ApplyResponse, JobDetail, JobList, Status
from helm_api.openapi import openapi_document
from poller import httpapi
from poller.errors import PermanentError, UpstreamError
from poller.httpapi import ApiError
from poller.logs import get_logger
from poller.names import valid_dns_label

log = get_logger(__name__)

#: Largest request body; the server (waitress) and the app both refuse larger ones with 413.
MAX_BODY = 64 * 1024
REALM = "helm-api"

__all__ = ["MAX_BODY", "ApiError", "create_app"]


class _Metrics:
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


class _LazyKube:
    """Builds the real client on first use, so an app without a reachable cluster still
    serves /healthz, /openapi.json and 401/403s."""

    def __init__(self, config: HelmApiConfig):
        self._config = config
        self._kube: Kube | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name):
        with self._lock:
            if self._kube is None:
                # config missing or unreadable: an UpstreamError (503) from the builder
                self._kube = Kube(api_client_from(kubeconfig=self._config.kubeconfig,
                                                  in_cluster=self._config.in_cluster))
        return getattr(self._kube, name)


def _error(status: int, code: str, message: str, **extra) -> Response:
    return httpapi.error_response(status, code, message, realm=REALM, **extra)


def create_app(config: HelmApiConfig | None = None, kube=None) -> Flask:
    """Build the app. ``kube`` is a :class:`~helm_api.kube.Kube`, a
    ``kubernetes.client.ApiClient``, or ``None`` to use the config's kubeconfig / in-cluster."""
    config = config or HelmApiConfig()
    if kube is None:
        kube = _LazyKube(config)
    elif not isinstance(kube, Kube) and hasattr(kube, "call_api"):
        kube = Kube(kube)

    app = Flask(__name__, static_folder=None)
    httpapi.install(app, realm=REALM, max_body=MAX_BODY, log=log)
    metrics = _Metrics()
    runner = JobRunner(kube, config,
                       on_created=lambda env, trigger, name: metrics.jobs.labels(env, trigger).inc())
    app.extensions["helm_api"] = {"config": config, "runner": runner, "kube": kube,
                                  "metrics": metrics}

    def require_token() -> None:
        httpapi.require_bearer(config.token)

    # -- plumbing -------------------------------------------------------------------
    @app.before_request
    def _start():
        g.started = time.perf_counter()

    @app.after_request
    def _count(resp: Response) -> Response:
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

    @app.errorhandler(UnknownEnvironment)
    def _unknown_env(exc: UnknownEnvironment):
        if not exc.environment:
            return _error(400, "environment_required",
                          "give 'environment' in the body; known: " + ", ".join(exc.known),
                          known=exc.known)
        return _error(400, "unknown_environment", str(exc), known=exc.known)

    @app.errorhandler(CronJobMissing)
    def _no_cronjob(exc):
        return _error(404, "cronjob_not_found", str(exc))

    @app.errorhandler(CronJobInvalid)
    def _bad_cronjob(exc):
        return _error(422, "cronjob_invalid", str(exc))

    @app.errorhandler(JobNotFound)
    def _no_job(exc):
        return _error(404, "job_not_found", str(exc))

    @app.errorhandler(UpstreamError)
    def _upstream(exc):
        log.warning("helm_api.kube.unavailable", error=str(exc))
        return _error(503, "cluster_unavailable", str(exc))

    @app.errorhandler(PermanentError)
    def _permanent(exc):
        log.error("helm_api.kube.refused", error=str(exc))
        return _error(502, "cluster_refused", str(exc))

    # -- routes -------------------------------------------------------------------------
    @app.post("/apply")
    def apply():
        require_token()
        req = ApplyRequest.from_body(httpapi.json_object())
        named = req.environment if req.environment is not None else config.resolved_default_environment
        g.apply_env = named if named in config.environments else None
        result = runner.apply(req.environment, req.reason)
        metrics.applies.labels(result.environment,
                               "created" if result.created else "queued").inc()
        answer = ApplyResponse(job=result.job, environment=result.environment,
                               created=result.created, follow_up_queued=result.follow_up_queued,
                               status_url=f"/jobs/{result.job}")
        return jsonify(answer.model_dump()), 202, {"Location": f"/jobs/{result.job}"}

    @app.get("/jobs")
    def list_jobs():
        limit = httpapi.query_int("limit", config.jobs_limit, minimum=1, maximum=500)
        runner.tick()
        answer = JobList.model_validate({"jobs": runner.list_runs(limit), "queued": runner.pending()})
        return jsonify(answer.model_dump())

    @app.get("/jobs/<name>")
    def get_job(name: str):
        if not valid_dns_label(name):
            raise JobNotFound(f"'{name}' is not a valid job name")
        return jsonify(JobDetail.model_validate(runner.describe(name)).model_dump())

    @app.get("/healthz")
    def healthz():
        return jsonify(Status(status="ok").model_dump())

    @app.get("/readyz")
    def readyz():
        try:
            kube.ready()
        except UpstreamError as exc:
            return _error(503, "not_ready", str(exc))
        return jsonify(Status(status="ok").model_dump())

    @app.get("/metrics")
    def metrics_view():
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document(sorted(config.environments),
                                        config.resolved_default_environment))

    return app
