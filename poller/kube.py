"""One mapping from a Kubernetes API call's failure to the error tree (poller/errors.py).

    404                      NotFound       (permanent)
    409                      Conflict       (permanent: exists, or changed since read)
    401, 403                 AuthError      (permanent: credentials or RBAC; retrying cannot help)
    429, 5xx, no answer      UpstreamError  (temporary, with the server's Retry-After)
    any other 4xx            PermanentError (the request was wrong)

:func:`call` runs one client method with ``_preload_content=False`` and returns the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from poller.errors import AuthError, Conflict, NotFound, PermanentError, SlipwayError, UpstreamError
from poller.http import parse_retry_after

UPSTREAM = "kubernetes"


def _message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason or "")
    except (ValueError, AttributeError, TypeError):
        return str(getattr(exc, "reason", "") or "")


def api_error(exc: BaseException, what: str, *, upstream: str = UPSTREAM) -> SlipwayError:
    """The Slipway error for ``exc`` raised by a call described as ``what``."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, SlipwayError):
        return exc
    if not isinstance(exc, ApiException):   # connection refused, TLS, a timeout
        return UpstreamError(f"{upstream}: {what}: {type(exc).__name__}: {exc}"[:500], upstream=upstream)
    status = int(exc.status or 0)
    detail = f"{upstream}: {what}: {status} {_message(exc)}".rstrip()[:500]
    if status == 404:
        return NotFound(detail)
    if status == 409:
        return Conflict(detail)
    if status in (401, 403):
        return AuthError(detail)
    if status == 0 or status == 429 or status >= 500:
        headers = exc.headers or {}
        return UpstreamError(detail, upstream=upstream, status=status or None,
                             retry_after=parse_retry_after(headers.get("Retry-After")))
    return PermanentError(detail)


def call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the raw response parsed as JSON; failures mapped by
    :func:`api_error`."""
    try:
        resp = fn(*args, _preload_content=False, **kwargs)
        return json.loads(resp.data) if resp.data else {}
    except Exception as exc:
        raise api_error(exc, what) from exc
