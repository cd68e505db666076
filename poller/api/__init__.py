"""The poller's HTTP API: a Flask app factory with one blueprint per domain.

``create_app(runtime)`` takes the process's :class:`~poller.runtime.Runtime` (config, store,
pipeline and scheduler when they run here, fleet state, artifacts...); views reach it through
:func:`runtime` and build nothing themselves; nothing here reads the environment. Auth, errors, input parsing
and serving come from :mod:`poller.httpapi`, shared with the helm API:

* Every call that changes something needs ``Authorization: Bearer <api.token>`` (401 without
  or malformed, 403 wrong; constant-time). With no (or an empty) ``api.token`` every such call
  is refused.
* Read-only calls (``/api/v1/status``, builds, approvals, updates, fleet, the dashboard's data)
  are open when ``api.public_read`` is true, else they need the token too. ``/healthz``,
  ``/metrics``, ``/openapi.json`` and the dashboard's static assets are always open; webhooks
  carry their own secrets.
* Errors are JSON ``{"error", "message"}``; bad input is a 4xx, never a 500.
Each domain's routes are a blueprint, imported and registered explicitly in :func:`create_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g

from poller import httpapi
from poller.errors import ConfigError
from poller.httpapi import error_response
from poller.logs import get_logger

if TYPE_CHECKING:
    from poller.runtime import Runtime

log = get_logger("poller.api")

#: The realm named in ``WWW-Authenticate`` challenges.
REALM = "slipway"


def runtime() -> Runtime:
    """The runtime the app was created with."""
    return current_app.extensions["slipway"]


def run_now(*job_ids: str) -> list[str]:
    """Run these scheduled jobs now, for the work a decision taken through the API unblocks (an
    approval, a resumed rollout, a published plugin, a release tag). With several replicas only
    the leader runs them: a follower hands them over in the store, and the leader runs each once.
    Returns the jobs asked for; none when this process runs no scheduler."""
    sched = runtime().scheduler
    if sched is None:
        return []
    return [j for j in dict.fromkeys(job_ids) if sched.trigger(j)]


def check_token() -> None:
    """Raise :class:`ApiError` (401/403) unless the request carries ``api.token``."""
    httpapi.require_bearer(runtime().config.api.token)
    g.actor = "token"


def can_read() -> bool:
    """True when read-only data may be served to this request."""
    return runtime().config.api.public_read or httpapi.has_bearer(runtime().config.api.token)


def require_token(fn: Callable) -> Callable:
    """For routes that change something."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        check_token()
        return fn(*args, **kwargs)
    return wrapper


def read_access(fn: Callable) -> Callable:
    """For read-only routes: open when ``api.public_read``, else the token is needed."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if not runtime().config.api.public_read:
            check_token()
        return fn(*args, **kwargs)
    return wrapper


def error(status: int, code: str, message: str, **extra: Any):
    return error_response(status, code, message, realm=REALM, **extra)


def json_body(required: bool = False) -> dict:
    """The request's JSON object; a clear 400 for anything else."""
    return httpapi.json_object(required=required)


def body_as(model: Any, required: bool = False) -> Any:
    """The request's JSON object validated by the pydantic ``model`` (unknown fields: 400)."""
    return httpapi.validate(model, json_body(required=required))


def create_app(rt: Runtime) -> Flask:
    # static_folder=None: the only static files are the dashboard's own (its blueprint).
    app = Flask("poller.api", static_folder=None)
    app.extensions["slipway"] = rt
    app.config["JSON_SORT_KEYS"] = False
    httpapi.install(app, realm=REALM, max_body=rt.config.api.max_body_bytes, log=log)

    from poller.api import artifacts, core, dashboard, fleet, openapi, releases, rollbacks, updates, webhooks

    for module in (core, updates, fleet, artifacts, webhooks, dashboard, rollbacks, releases, openapi):
        app.register_blueprint(module.blueprint)
    return app


def serve_in_thread(app: Flask, listen: str) -> httpapi.Served:
    """Serve ``app`` on ``listen`` (host:port) with waitress from a daemon thread."""
    config = app.extensions["slipway"].config
    api = config.api
    try:
        return httpapi.serve(app, listen, name="slipway-api", threads=api.threads,
                             max_body=max(api.max_body_bytes, api.max_upload_bytes))
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=config.path, key="api.listen") from None
