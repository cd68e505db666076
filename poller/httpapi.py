"""One HTTP toolkit for both Flask services: the poller's API and the helm API.

Both import this module (it depends on nothing above :mod:`poller.errors`), so they answer
alike:

* Every error is JSON ``{"error": code, "message": ...}`` (:func:`error_response`), raised as
  :class:`ApiError` anywhere in a view; Werkzeug's own errors (404, 405, 413) and unexpected
  exceptions get the same shape from :func:`install` (an unexpected one is a logged 500 that
  never shows a traceback).
* An error of the tree (:mod:`poller.errors`) raised in a view is answered from one table,
  :data:`STATUS` (:func:`status_for`): not found 404, auth 403, invalid input 400, upstream
  unreachable 503, unprocessable 422, conflict and other permanent refusals 409, anything
  else 500.
* Bearer tokens (:func:`require_bearer`): the scheme is case-insensitive (RFC 6750 / RFC 7235),
  a missing header, another scheme or ``Bearer`` with nothing after it is **401** with a
  ``WWW-Authenticate`` challenge, a wrong token is **403**, the comparison is constant-time, and
  an unset or empty configured token accepts nothing (403).
* An empty secret never authenticates (:func:`configured_secret`, :func:`secret_matches`).
* Query and path numbers are parsed strictly (:func:`query_int`, the ``id`` URL converter):
  ASCII digits in range, else 400/404, never an ``int()`` crash or a silent clamp.
* JSON bodies (:func:`json_object`) are objects or a 400; nesting deeper than
  :data:`MAX_JSON_DEPTH` is a 400 too.
* :func:`serve` runs an app under waitress (a production WSGI server: bounded threads,
  connection limit, idle timeout, request-body limit) in a background thread.
"""

from __future__ import annotations

import errno
import hmac
import json
import re
import threading
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from poller.errors import (
    AuthError,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    PermanentError,
    SlipwayError,
    Unprocessable,
    UpstreamError,
)

#: Deepest JSON nesting a request body may have.
MAX_JSON_DEPTH = 32
#: Largest id accepted in a URL path (sqlite's INTEGER is signed 64-bit).
MAX_ID = 2**63 - 1

_DIGITS = re.compile(r"[0-9]{1,19}")


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with HTTP ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        self.status, self.code, self.message, self.extra = status, code, message, extra
        super().__init__(message)


#: The error tree → HTTP status and default ``error`` code; the first row the error is an
#: instance of wins (the most specific rows come first). Both Flask apps answer from it.
STATUS: tuple[tuple[type[SlipwayError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (AuthError, 403, "upstream_refused"),      # an upstream refused our credentials
    (InvalidInput, 400, "bad_request"),
    (UpstreamError, 503, "upstream_unavailable"),
    (Unprocessable, 422, "unprocessable"),
    (Conflict, 409, "conflict"),
    (PermanentError, 409, "refused"),          # will not pass by retrying as asked
    (SlipwayError, 500, "internal_error"),
)


def status_for(exc: SlipwayError, codes: dict[type[SlipwayError], str] | None = None) -> tuple[int, str]:
    """``(status, code)`` of ``exc``: the status from :data:`STATUS`; the code is the error
    class's own (``code``), else the first of an app's ``codes`` (class → code) that ``exc`` is
    an instance of, else the table's."""
    status, code = next((s, c) for cls, s, c in STATUS if isinstance(exc, cls))
    if exc.code:
        return status, exc.code
    for cls, named in (codes or {}).items():
        if isinstance(exc, cls):
            return status, named
    return status, code


def error_response(status: int, code: str, message: str, *, realm: str | None = None,
                   **extra: Any) -> Response:
    """The one JSON error shape. A 401 carries a ``Bearer`` challenge for ``realm``."""
    resp = jsonify({"error": code, "message": message, **extra})
    resp.status_code = status
    if status == 401 and realm:
        resp.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
    return resp


# -- secrets and tokens ------------------------------------------------------------------------
def configured_secret(value: Any) -> str | None:
    """The configured secret's text, or None when it is unset or empty (all whitespace).

    ``value`` is a :class:`pydantic.SecretStr`, a ``str`` or None. An empty secret (a
    ``${VAR}`` set to "", an empty ``${file:...}``) is treated exactly like an unset one."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text if text.strip() else None


def secret_matches(given: str | bytes | None, expected: Any) -> bool:
    """Constant-time ``given == expected``; False whenever either side is empty.

    A header value reaches a WSGI app as its raw bytes decoded as latin-1 (PEP 3333), so a
    non-ASCII secret sent as UTF-8 is compared by those raw bytes too."""
    secret = configured_secret(expected)
    if secret is None or not given:
        return False
    want = secret.encode("utf-8", "surrogateescape")
    if isinstance(given, bytes):
        return hmac.compare_digest(given, want)
    candidates = [given.encode("utf-8", "surrogateescape")]
    try:
        candidates.append(given.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    # Both candidates are always compared: the time taken does not depend on which matched.
    return sum(hmac.compare_digest(c, want) for c in candidates) > 0


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive);
    None when the header is missing, uses another scheme or carries no token."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None
    return value


def require_bearer(expected: Any, *, header: str | None = None) -> None:
    """Raise :class:`ApiError` unless the request carries ``expected`` as bearer token.

    401 for a missing or malformed header, 403 for a wrong token or when no (non-empty)
    token is configured: an API without a token accepts no token at all."""
    given = bearer_token(request.headers.get("Authorization") if header is None else header)
    if given is None:
        raise ApiError(401, "unauthorized", "this call needs 'Authorization: Bearer <token>'")
    if not secret_matches(given, expected):
        raise ApiError(403, "forbidden", "the bearer token is not valid")


def has_bearer(expected: Any) -> bool:
    """True when the request carries the right bearer token."""
    given = bearer_token(request.headers.get("Authorization"))
    return given is not None and secret_matches(given, expected)


# -- input --------------------------------------------------------------------------------------
def query_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    """An integer query parameter in ``[minimum, maximum]``; anything else is a 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise ApiError(400, "bad_request",
                       f"'{name}' must be an integer from {minimum} to {maximum}")
    return int(raw)


def query_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A query parameter that must be one of ``choices``; anything else is a 400 listing them."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise ApiError(400, "bad_request", f"'{name}' must be one of: {', '.join(choices)}")
    return raw


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return True


def parse_json(raw: bytes | str, *, what: str = "the body") -> Any:
    """Parse ``raw`` as JSON; a 400 :class:`ApiError` for invalid or too deeply nested JSON."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "bad_json", f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"{what} is not valid JSON: {exc}") from None
    if not _depth(data, MAX_JSON_DEPTH):
        raise ApiError(400, "bad_json", f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def json_object(*, required: bool = False) -> dict:
    """The request body as a JSON object: ``{}`` when empty (unless ``required``), else 400."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ApiError(400, "bad_request", "a JSON body is required")
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


def validate(model: Any, data: dict) -> Any:
    """``model.model_validate(data)`` with a 400 naming the field on failure."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ApiError(400, "bad_request", f"'{where}': {msg}") from None


class IdConverter(BaseConverter):
    """``<id:name>``: a non-negative id that fits a signed 64-bit integer; else the route
    does not match (404)."""

    regex = r"[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        from werkzeug.routing import ValidationError

        number = int(value)
        if number > MAX_ID:
            raise ValidationError()
        return number

    def to_url(self, value: Any) -> str:
        return str(int(value))


# -- the app ------------------------------------------------------------------------------------
def install(app: Flask, *, realm: str, max_body: int, log: Any,
            codes: dict[type[SlipwayError], str] | None = None) -> None:
    """Give ``app`` the shared error handling, the ``id`` converter and a body-size limit.

    ``codes``: the app's own names for kinds of errors (the helm API calls an unreachable
    upstream ``cluster_unavailable``); the status always comes from :data:`STATUS`."""
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.url_map.converters["id"] = IdConverter

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, realm=realm, **exc.extra)

    @app.errorhandler(SlipwayError)
    def _slipway_error(exc: SlipwayError):
        status, code = status_for(exc, codes)
        level = log.warning if status >= 500 or isinstance(exc, AuthError) else log.info
        level("http.error", status=status, code=code, error=f"{type(exc).__name__}: {exc}",
              path=request.path)
        return error_response(status, code, str(exc), realm=realm,
                              **(getattr(exc, "extra", None) or {}))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        if exc.code == 413:
            message = f"the request body is larger than {max_body} bytes"
        else:
            message = exc.description or exc.name or code
        resp = error_response(exc.code or 500, code, message, realm=realm)
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                resp.headers[key] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("http.unexpected", error=f"{type(exc).__name__}: {exc}", path=request.path,
                  exc_info=exc)
        return error_response(500, "internal_error", "unexpected error; see the server's log")


class Served:
    """A WSGI app served by waitress from a daemon thread; :meth:`close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread):
        self._server, self._thread = server, thread
        listen = getattr(server, "effective_listen", None)
        self.port: int = listen[0][1] if listen else server.effective_port

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts)."""
        while self._thread.is_alive():
            self._thread.join(1.0)

    def close(self, timeout: float = 5.0) -> None:
        """Let the running requests end, then close every socket and wait for the server thread.

        The sockets are closed by the server's own thread (woken through waitress's trigger):
        closed from here they would vanish under that thread's ``select()``, which then fails
        with EBADF or, once the numbers are reused, waits on whatever this process opens next."""
        from waitress import trigger, wasyncore

        sockets = getattr(self._server, "map", None) or self._server._map
        self._server.task_dispatcher.shutdown(timeout=timeout)
        wake = next((d for d in list(sockets.values()) if isinstance(d, trigger.trigger)), None)
        if wake is not None and self._thread.is_alive():
            wake.pull_trigger(lambda: wasyncore.close_all(sockets))
            self._thread.join(timeout)
        if sockets:  # the loop was not running (or did not answer): close them here
            wasyncore.close_all(sockets)
            self._thread.join(timeout)


#: waitress settings both services use (see README "Operating it").
SERVER_LIMITS = {"threads": 8, "connection_limit": 100, "channel_timeout": 60,
                 "max_request_header_size": 64 * 1024}


def _listen_error(listen: str, host: str, exc: Exception) -> ConfigError:
    """Why ``listen`` can't be bound, as a :class:`ConfigError` whose key is the part at fault
    (``port`` or ``host``); the caller puts its own file and setting name on it."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return ConfigError(f"cannot listen on {listen}: the address is already in use (another "
                           "instance, or another service on that port?)", key="port")
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return ConfigError(f"cannot listen on {listen}: permission denied (ports below 1024 "
                           "need root)", key="port")
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"cannot listen on {listen}: {host} is not an address of this "
                           "machine", key="host")
    if isinstance(exc, ValueError):  # waitress: the host does not resolve
        return ConfigError(f"cannot listen on {listen}: {host!r} is not an address or a host "
                           "name this machine can resolve", key="host")
    reason = getattr(exc, "strerror", None) or str(exc)
    return ConfigError(f"cannot listen on {listen}: {reason}", key="host")


def serve(app: Any, listen: str, *, max_body: int, name: str = "http",
          threads: int | None = None) -> Served:
    """Serve ``app`` on ``listen`` (``host:port``; port 0 picks one) with waitress from a
    daemon thread. Bodies over ``max_body`` are answered 413 by waitress before they are
    read; idle connections close after ``channel_timeout`` seconds. An address that can't be
    bound (in use, not this machine's, unresolvable) raises :class:`ConfigError`."""
    from waitress.server import create_server

    host, _, port = listen.rpartition(":")
    settings = dict(SERVER_LIMITS, max_request_body_size=max_body, ident=name)
    if threads is not None:
        settings["threads"] = threads
    host = host.strip("[]") or "0.0.0.0"
    try:
        server = create_server(app, host=host, port=int(port), **settings)
    except (OSError, ValueError) as exc:
        raise _listen_error(listen, host, exc) from None
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    return Served(server, thread)
