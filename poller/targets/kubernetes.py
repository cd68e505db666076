"""Kubernetes workloads: Deployment, StatefulSet, DaemonSet and OpenKruiseGame GameServerSet.

Only the named container's image changes, through a JSON patch guarded by a ``test`` on the
container's name (so a reordered pod template fails instead of patching the wrong one). For
a GameServerSet this is exactly what lets ``InPlaceIfPossible`` restart just that container.
Health: the controller observed the new generation and all replicas are updated and
available (GameServerSet: the ``updatedReadyReplicas`` OpenKruiseGame reports, unless Slipway
drives the rollout itself, see :mod:`poller.rollout`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from poller import kube
from poller.errors import Conflict
from poller.targets.base import Applied, ImageRef, TargetError

GSS = ("game.kruise.io", "v1alpha1", "gameserversets")
_JSON_PATCH = "application/json-patch+json"


def containers_path(kind: str) -> str:
    return "/spec/gameServerTemplate/spec/containers" if kind == "GameServerSet" \
        else "/spec/template/spec/containers"


def find_container(obj: dict, kind: str, name: str) -> tuple[int, dict]:
    node: Any = obj
    for part in containers_path(kind).strip("/").split("/"):
        node = (node or {}).get(part)
    for i, c in enumerate(node or []):
        if c.get("name") == name:
            return i, c
    raise TargetError(f"{kind} {obj['metadata']['name']} has no container named {name!r}")


def image_patch(path: str, index: int, container: str, image: str) -> list[dict]:
    return [{"op": "test", "path": f"{path}/{index}/name", "value": container},
            {"op": "replace", "path": f"{path}/{index}/image", "value": image}]


class KubernetesWorkload:
    def __init__(self, api, *, kind: str, name: str, namespace: str, container: str,
                 timeout: float = 300.0, poll: float = 1.0, wait_rollout: bool = True,
                 sleep: Callable[[float], None] | None = None, informer=None):
        """``informer``: the :class:`~poller.targets.informer.Informer` of this kind and namespace;
        reads come from its cache (no API-server request), writes go to the API server."""
        from kubernetes import client

        self.api = api
        self.informer = informer
        self.kind, self.name, self.namespace, self.container = kind, name, namespace, container
        self.timeout, self.poll, self.wait_rollout = timeout, poll, wait_rollout
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._sleep = sleep or (lambda s: time.sleep(s))
        self.description = f"{kind} {namespace}/{name} container {container}"

    # -- raw reads and writes (JSON dicts, camelCase as the API server speaks) -----------
    def _call(self, what: str, fn, *args, **kwargs) -> dict:
        """One API call; failures mapped onto the error tree by :mod:`poller.kube`."""
        return kube.call(what, fn, *args, **kwargs)

    def read(self) -> dict:
        """The workload as last seen (the informer's cache when there is one)."""
        if self.informer is None:
            return self.fetch()
        obj = self.informer.get(self.name)
        if obj is None:
            raise TargetError(f"kubernetes: read {self.description}: 404 Not Found")
        return obj

    def fetch(self) -> dict:
        """The workload read from the API server now (fed into the cache)."""
        ns, name = self.namespace, self.name
        obj = self._fetch(ns, name)
        if self.informer is not None:
            self.informer.observe(obj)
        return obj

    def _fetch(self, ns: str, name: str) -> dict:
        if self.kind == "GameServerSet":
            return self._call(f"read {self.description}", self.custom.get_namespaced_custom_object,
                              *GSS[:2], ns, GSS[2], name)
        fn = {"Deployment": self.apps.read_namespaced_deployment,
              "StatefulSet": self.apps.read_namespaced_stateful_set,
              "DaemonSet": self.apps.read_namespaced_daemon_set}[self.kind]
        return self._call(f"read {self.description}", fn, name, ns)

    def _patch(self, body: list[dict]) -> dict:
        from kubernetes.client.exceptions import ApiException

        ns, name = self.namespace, self.name
        try:
            if self.kind == "GameServerSet":
                resp = self.custom.patch_namespaced_custom_object(*GSS[:2], ns, GSS[2], name, body,
                                                                  _content_type=_JSON_PATCH,
                                                                  _preload_content=False)
            else:
                fn = {"Deployment": self.apps.patch_namespaced_deployment,
                      "StatefulSet": self.apps.patch_namespaced_stateful_set,
                      "DaemonSet": self.apps.patch_namespaced_daemon_set}[self.kind]
                resp = fn(name, ns, body, _content_type=_JSON_PATCH, _preload_content=False)
        except ApiException as exc:
            # a failed ``test`` (resourceVersion or container name) is 422; a version clash 409
            if exc.status in (409, 422):
                raise Conflict(f"kubernetes: patch {self.description}: {exc.status} {exc.reason}: "
                               f"changed since it was read") from exc
            raise kube.api_error(exc, f"patch {self.description}") from exc
        except Exception as exc:  # connection refused, TLS...
            raise kube.api_error(exc, f"patch {self.description}") from exc
        obj = json.loads(resp.data)
        if self.informer is not None:
            self.informer.observe(obj)
        return obj

    # -- Target -------------------------------------------------------------------------
    def current(self) -> ImageRef | None:
        _, c = find_container(self.read(), self.kind, self.container)
        return ImageRef.parse(c["image"]) if c.get("image") else None

    def apply(self, image: ImageRef, *, wait: bool | None = None) -> Applied:
        """Patch the container's image, on condition that the workload is still the one read
        (its resourceVersion): :class:`Conflict` otherwise. ``wait`` (default: ``wait_rollout``)
        returns only once healthy; without it see :meth:`health`."""
        obj = self.read()
        index, c = find_container(obj, self.kind, self.container)
        before = c.get("image")
        body = image_patch(containers_path(self.kind), index, self.container, str(image))
        rv = obj["metadata"].get("resourceVersion")
        if rv:
            body.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        patched = self._patch(body)
        generation = patched["metadata"].get("generation")
        detail = {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                  "container": self.container, "from_image": before, "to_image": str(image),
                  "generation": generation}
        if self.wait_rollout if wait is None else wait:
            detail["status"] = self.wait_healthy(generation)
        return Applied(detail)

    def health(self, generation: int | None) -> tuple[bool, str]:
        """(healthy, why not) from the cache; :class:`TargetError` when the rollout is stuck."""
        return self.rollout_state(self.read(), generation)

    def expire(self) -> None:
        """Past the deadline the patch stays as it is (its version is held): nothing to undo."""

    def rollout_state(self, obj: dict, generation: int | None) -> tuple[bool, str]:
        """(done, why not) from a workload's status, as ``kubectl rollout status`` judges it."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if generation and (status.get("observedGeneration") or 0) < generation:
            return False, "controller has not observed the new generation yet"
        if self.kind == "DaemonSet":
            want = status.get("desiredNumberScheduled", 0)
            updated, available = status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0)
        else:
            want = spec.get("replicas", 1)
            updated = status.get("updatedReplicas", 0)
            available = status.get("updatedReadyReplicas" if self.kind == "GameServerSet"
                                   else "availableReplicas", 0)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                raise TargetError(f"{self.description}: rollout stuck: {cond.get('message')}")
        if updated < want:
            return False, f"{updated}/{want} replicas updated"
        if available < want:
            return False, f"{available}/{want} replicas available"
        if self.kind == "Deployment" and status.get("replicas", 0) > updated:
            return False, f"{status.get('replicas', 0) - updated} old replicas still terminating"
        return True, f"{updated}/{want} updated and available"

    def wait_healthy(self, generation: int | None) -> str:
        deadline = time.monotonic() + self.timeout
        why = "not checked"
        while True:
            done, why = self.rollout_state(self.read(), generation)
            if done:
                return why
            if time.monotonic() >= deadline:
                raise TargetError(f"{self.description}: not healthy after {self.timeout:.0f}s: {why}")
            if self.informer is not None:   # woken by the watch, no polling of the API server
                self.informer.wait_for(lambda: False, min(self.poll, max(0.0, deadline - time.monotonic())))
            else:
                self._sleep(self.poll)


def workload_servers(target: KubernetesWorkload, selector: dict[str, str]) -> list[tuple[str, str | None]]:
    """``[(pod, ip)]`` of the workload's live pods (for a reload after a rollout)."""
    from kubernetes import client

    informers = getattr(target, "informers", None)
    if informers is not None:
        pods = [p for p in informers.get("Pod", target.namespace).list(selector)
                if not p["metadata"].get("deletionTimestamp")]
        return sorted((p["metadata"]["name"], (p.get("status") or {}).get("podIP")) for p in pods)
    sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    resp = client.CoreV1Api(target.api).list_namespaced_pod(target.namespace, label_selector=sel,
                                                            _preload_content=False)
    pods = [p for p in json.loads(resp.data)["items"] if not p["metadata"].get("deletionTimestamp")]
    return sorted((p["metadata"]["name"], (p.get("status") or {}).get("podIP")) for p in pods)
