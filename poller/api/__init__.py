"""The poller's HTTP API: a Flask app factory with one blueprint per domain.

``create_app(services)`` takes the already-built parts (store, config, pipeline, scheduler...)
in a :class:`Services` holder; nothing here reads the environment. Every call that changes
something needs ``Authorization: Bearer <api.token>`` (401 without, 403 wrong, compared in
constant time); read-only calls are open when ``api.public_read`` is true. Errors are JSON.
Domains add their routes with ``register_blueprint`` hooks listed in :data:`BLUEPRINTS`.
"""

from __future__ import annotations

import hmac
from poller.optional import import_optional
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from poller.config import Config
from poller.errors import SlipwayError
from poller.store import Store

#: Modules with a ``blueprint`` attribute; a missing module is simply not part of this build.
BLUEPRINTS = (
    "poller.api.core",
    "poller.api.updates",
    "poller.api.fleet",
    "poller.api.artifacts",
    "poller.api.webhooks",
    "poller.api.dashboard",
)


@dataclass
class Services:
    """What the API can reach. Optional parts are ``None`` when not running."""

    config: Config
    store: Store
    pipeline: Any = None
    scheduler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def services() -> Services:
    return current_app.extensions["slipway"]


def _token_ok(required: bool) -> tuple[bool, int]:
    token = services().config.api.token
    header = request.headers.get("Authorization", "")
    if token is None:
        # No token configured: mutating calls are refused rather than left open.
        return (not required), 403
    if not header.startswith("Bearer "):
        return (not required), 401
    given = header[len("Bearer "):].strip().encode()
    if hmac.compare_digest(given, token.get_secret_value().encode()):
        g.actor = "token"
        return True, 200
    return False, 403


def require_token(fn: Callable) -> Callable:
    """For routes that change something."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        ok, status = _token_ok(required=True)
        if not ok:
            return error(status, "unauthorized" if status == 401 else "forbidden",
                         "a valid bearer token is required" if status == 401 else
                         "the token is wrong or the API has no token configured")
        return fn(*args, **kwargs)
    return wrapper


def read_access(fn: Callable) -> Callable:
    """For read-only routes: open when ``api.public_read``, else the token is needed."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if not services().config.api.public_read:
            ok, status = _token_ok(required=True)
            if not ok:
                return error(status, "unauthorized" if status == 401 else "forbidden",
                             "this API requires a bearer token for reading too")
        return fn(*args, **kwargs)
    return wrapper


def error(status: int, code: str, message: str, **extra: Any):
    resp = jsonify({"error": code, "message": message, **extra})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="slipway"'
    return resp


def json_body(required: bool = False) -> dict:
    """The request's JSON object; a clear 400 for anything else."""
    if not request.data:
        if required:
            raise BadInput("a JSON body is required")
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    return data


class BadInput(SlipwayError):
    pass


def create_app(svc: Services) -> Flask:
    app = Flask("slipway")
    app.extensions["slipway"] = svc
    app.config["JSON_SORT_KEYS"] = False

    @app.errorhandler(BadInput)
    def _bad(exc):
        return error(400, "bad_request", str(exc))

    @app.errorhandler(SlipwayError)
    def _slipway(exc):
        return error(409, type(exc).__name__, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc):
        return error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")

    @app.errorhandler(Exception)
    def _crash(exc):
        app.logger.exception("api.crash")
        return error(500, "internal", "internal error; see the poller's log")

    for name in BLUEPRINTS:
        module = import_optional(name)
        if module is not None:
            app.register_blueprint(module.blueprint)
    return app


def serve_in_thread(app: Flask, listen: str):
    """Serve ``app`` on ``listen`` (host:port) from a daemon thread; returns the server."""
    import threading

    from werkzeug.serving import make_server

    host, _, port = listen.rpartition(":")
    server = make_server(host, int(port), app, threaded=True)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    return server
