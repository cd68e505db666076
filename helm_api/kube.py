"""The one narrow door to the Kubernetes API the helm API needs.

:class:`Kube` wraps a ``kubernetes.client.ApiClient`` and speaks plain dicts (the JSON the
API server returned), so job templating is a dict copy and tests can read results as JSON.
Every failure becomes one of the errors below, chained ``from`` the client's exception.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from poller.errors import NotFound, PermanentError, UpstreamError

_TIMEOUT = (5, 30)


class KubeUnavailable(UpstreamError):
    """The API server could not be reached or answered 5xx/429: try again later."""


class KubeNotFound(NotFound):
    """The object asked for does not exist."""


class KubeConflict(PermanentError):
    """The object already exists (a Job name taken)."""


class KubeForbidden(PermanentError):
    """The API server refused our credentials or RBAC forbids the call."""


class KubeError(PermanentError):
    """Any other 4xx: the request we sent was wrong."""


def _map(exc: Exception, what: str) -> Exception:
    if isinstance(exc, ApiException):
        status = exc.status or 0
        reason = _reason(exc)
        if status == 404:
            return KubeNotFound(f"{what}: not found")
        if status == 409:
            return KubeConflict(f"{what}: already exists")
        if status in (401, 403):
            return KubeForbidden(f"{what}: {status} {reason}")
        if status == 0 or status == 429 or status >= 500:
            return KubeUnavailable(f"{what}: {status} {reason}", upstream="kube-apiserver",
                                   status=status or None)
        return KubeError(f"{what}: {status} {reason}")
    return KubeUnavailable(f"{what}: {type(exc).__name__}: {exc}"[:300], upstream="kube-apiserver")


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or ""
    except (ValueError, AttributeError):
        return exc.reason or ""


def api_client_from(*, kubeconfig: str | None = None, in_cluster: bool = False) -> k8s.ApiClient:
    """Build an ApiClient from a kubeconfig file or the pod's service account."""
    from kubernetes import config as kconfig

    configuration = k8s.Configuration()
    if in_cluster:
        kconfig.load_incluster_config(client_configuration=configuration)
    else:
        kconfig.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.retries = False
    return k8s.ApiClient(configuration)


class Kube:
    """Get the CronJob, create/list/get Jobs, list pods, read pod logs, check readiness."""

    def __init__(self, api_client: k8s.ApiClient):
        self.api_client = api_client
        self._batch = k8s.BatchV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)

    @staticmethod
    def _json(resp) -> Any:
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=_TIMEOUT, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _map(exc, what) from exc
        return self._json(resp)

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
        try:
            resp = self._core.read_namespaced_pod_log(pod, namespace, _preload_content=False,
                                                      _request_timeout=(3, 10), **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _map(exc, f"log of pod {namespace}/{pod}") from exc
        try:
            return resp.data.decode("utf-8", "replace")
        finally:
            resp.release_conn()

    def ready(self) -> None:
        """Raise :class:`KubeUnavailable` unless the API server answers ``/readyz`` with ok."""
        try:
            if hasattr(self.api_client, "param_serialize"):  # clients from the newer generator (v37 here)
                params = self.api_client.param_serialize("GET", "/readyz",
                                                         auth_settings=["BearerToken"])
                resp = self.api_client.call_api(*params, _request_timeout=(3, 5))
                resp.read()
            else:  # older, python-legacy generated clients
                resp = self.api_client.call_api(
                    "/readyz", "GET", auth_settings=["BearerToken"], _preload_content=False,
                    _return_http_data_only=True, _request_timeout=(3, 5))
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            err = _map(exc, "API server /readyz")
            if isinstance(err, KubeForbidden):
                return  # /readyz is public by default; a refusal still proves the server answers
            raise err from exc
        body = (resp.data or b"").decode("utf-8", "replace").strip()
        if resp.status in (401, 403):
            return  # /readyz is public by default; a refusal still proves the server answers
        if resp.status != 200 or body != "ok":
            raise KubeUnavailable(f"API server /readyz: {resp.status} {body[:200]}",
                                  upstream="kube-apiserver", status=resp.status)
