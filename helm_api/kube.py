"""The one narrow door to the Kubernetes API the helm API needs.

:class:`Kube` wraps a ``kubernetes.client.ApiClient`` (built by :func:`poller.kube.api_client`)
and speaks plain dicts (the JSON the API server returned), so job templating is a dict copy and
tests can read results as JSON. Every failure is mapped by :func:`poller.kube.api_error`, the
poller's one mapping, chained ``from`` the client's exception: ``NotFound`` (404),
``Conflict`` (409), ``AuthError`` (401/403), another ``PermanentError`` (other 4xx) and
``UpstreamError`` (no answer, 429, 5xx).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from poller import kube as pkube
from poller.errors import AuthError, UpstreamError

UPSTREAM = "kube-apiserver"
_LOG_TIMEOUT = (3, 10)
_READY_TIMEOUT = (3, 5)


def api_client_from(*, kubeconfig: str | None = None, in_cluster: bool = False) -> k8s.ApiClient:
    """An ApiClient from a kubeconfig file or the pod's service account (the shared builder)."""
    return pkube.api_client(kubeconfig, in_cluster=in_cluster)


class Kube:
    """Get the CronJob, create/list/get Jobs, list pods, read pod logs, check readiness."""

    def __init__(self, api_client: k8s.ApiClient):
        self.api_client = api_client
        self._batch = k8s.BatchV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)

    def _raw(self, what: str, fn: Callable[..., Any], *args: Any,
             timeout: tuple[float, float] = pkube.TIMEOUT, **kwargs: Any) -> bytes:
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
        except Exception as exc:
            raise pkube.api_error(exc, what, upstream=UPSTREAM) from exc
        try:
            return resp.data or b""
        finally:
            resp.release_conn()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        data = self._raw(what, fn, *args, **kwargs)
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise UpstreamError(f"{UPSTREAM}: {what}: the answer is not JSON", upstream=UPSTREAM) from exc

    def get_cronjob(self, namespace: str, name: str) -> dict:
        return self._call(f"cronjob {namespace}/{name}", self._batch.read_namespaced_cron_job,
                          name, namespace)

    def create_job(self, namespace: str, body: dict) -> dict:
        name = body.get("metadata", {}).get("name", "?")
        return self._call(f"create job {namespace}/{name}", self._batch.create_namespaced_job,
                          namespace, body)

    def get_job(self, namespace: str, name: str) -> dict:
        return self._call(f"job {namespace}/{name}", self._batch.read_namespaced_job, name,
                          namespace)

    def list_jobs(self, namespace: str, *, label_selector: str = "") -> list[dict]:
        data = self._call(f"jobs in {namespace}", self._batch.list_namespaced_job, namespace,
                          label_selector=label_selector)
        return data.get("items", [])

    def list_pods(self, namespace: str, *, label_selector: str = "") -> list[dict]:
        data = self._call(f"pods in {namespace}", self._core.list_namespaced_pod, namespace,
                          label_selector=label_selector)
        return data.get("items", [])

    def pod_log(self, namespace: str, pod: str, *, tail_lines: int, container: str | None = None
                ) -> str:
        kwargs: dict[str, Any] = {"tail_lines": tail_lines}
        if container:
            kwargs["container"] = container
        data = self._raw(f"log of pod {namespace}/{pod}", self._core.read_namespaced_pod_log,
                         pod, namespace, timeout=_LOG_TIMEOUT, **kwargs)
        return data.decode("utf-8", "replace")

    def ready(self) -> None:
        """Raise :class:`UpstreamError` unless the API server answers ``/readyz`` with ok."""
        try:
            if hasattr(self.api_client, "param_serialize"):  # clients from the newer generator (v37 here)
                params = self.api_client.param_serialize("GET", "/readyz",
                                                         auth_settings=["BearerToken"])
                resp = self.api_client.call_api(*params, _request_timeout=_READY_TIMEOUT)
                resp.read()
            else:  # older, python-legacy generated clients
                resp = self.api_client.call_api(
                    "/readyz", "GET", auth_settings=["BearerToken"], _preload_content=False,
                    _return_http_data_only=True, _request_timeout=_READY_TIMEOUT)
        except Exception as exc:
            err = pkube.api_error(exc, "API server /readyz", upstream=UPSTREAM)
            if isinstance(err, AuthError):
                return  # /readyz is public by default; a refusal still proves the server answers
            raise err from exc
        body = (resp.data or b"").decode("utf-8", "replace").strip()
        if resp.status in (401, 403):
            return  # /readyz is public by default; a refusal still proves the server answers
        if resp.status != 200 or body != "ok":
            raise UpstreamError(f"API server /readyz: {resp.status} {body[:200]}",
                                upstream=UPSTREAM, status=resp.status)
