"""One mapping from a Kubernetes API call's failure to the error tree (poller/errors.py).

    404                      NotFound       (permanent)
    409                      Conflict       (permanent: exists, or changed since read)
    401, 403                 AuthError      (permanent: credentials or RBAC; retrying cannot help)
    429, 5xx, no answer      UpstreamError  (temporary, with the server's Retry-After)
    any other 4xx            PermanentError (the request was wrong)

:func:`call` runs one client method with ``_preload_content=False`` and returns the JSON.
:func:`api_client` is the one way to build a ``kubernetes.client.ApiClient`` (kubeconfig file
and context, or the pod's service account), with one timeout policy (:data:`TIMEOUT`) and the
client's own urllib3 retries off (callers decide what to retry, from the mapped error).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from poller.errors import AuthError, Conflict, NotFound, PermanentError, SlipwayError, UpstreamError
from poller.http import parse_retry_after

UPSTREAM = "kubernetes"

#: (connect, read) seconds for one API call; watches pass their own.
TIMEOUT = (5.0, 30.0)
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def api_client(kubeconfig: str | None = None, *, context: str | None = None,
               in_cluster: bool | None = None) -> Any:
    """An ``ApiClient`` for ``kubeconfig`` (and ``context``), or the pod's service account.

    ``in_cluster`` None: the service account when no kubeconfig is named and the process runs
    in a pod, else the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``). A missing or
    unreadable configuration is an :class:`UpstreamError` naming it, never a raw exception.
    Calls made through :func:`call` time out after :data:`TIMEOUT` unless given their own."""
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    configuration = k8s.Configuration()
    try:
        if in_cluster is None:
            in_cluster = not kubeconfig and os.path.exists(SERVICE_ACCOUNT_TOKEN)
        if in_cluster:
            kconfig.load_incluster_config(client_configuration=configuration)
        else:
            kconfig.load_kube_config(config_file=kubeconfig, context=context,
                                     client_configuration=configuration)
    except Exception as exc:  # ConfigException, a missing/unreadable file, bad YAML
        where = "the in-cluster service account" if in_cluster else (kubeconfig or "the default kubeconfig")
        raise UpstreamError(f"{UPSTREAM}: cannot load cluster credentials from {where}: {exc}"[:500],
                            upstream=UPSTREAM) from exc
    configuration.retries = False
    return k8s.ApiClient(configuration)


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
        kwargs.setdefault("_request_timeout", TIMEOUT)
        resp = fn(*args, _preload_content=False, **kwargs)
        return json.loads(resp.data) if resp.data else {}
    except Exception as exc:
        raise api_error(exc, what) from exc
