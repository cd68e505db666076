"""Plugin rollouts for servers on Kubernetes: restart outdated pods one by one, busy ones last.

Game-server pods carry the label ``slipway.io/server-type`` in the environment's namespace and
run ``fetch-plugins.sh`` at start (e.g. an init container) with their channel tag, so a pod
created after its channel moved runs the new plugin set. Whatever controller owns the pods
(a Deployment's ReplicaSet, a StatefulSet, OpenKruiseGame's GameServerSet) recreates a deleted
pod, so a restart is a pod deletion, the same for every owner.

**What a pod runs** is the pod annotation ``slipway.io/plugins`` (the plugin-set stamp,
:func:`plugin_stamp`), which Slipway writes on every pod it sees for the first time. It knows the
value without asking the pod: the ConfigMap ``plugins.kube.record_configmap`` holds, per server
type, the stamp its channel was at when Slipway last wrote the record. At the start of a cycle
(channels already moved) every unstamped pod gets the *recorded* stamp (``unknown`` when there is
none); only then is the record moved to the new stamp. A pod still unstamped later was created
after that write, so after the channel moved: it runs the new set. A pod created between the
channel move and the record write is stamped old and restarted once more: never the other way.

**One cycle** per environment, server types in dependency order (a type waits while a type it
depends on still has outdated pods):

* an outdated pod with players (any of the type's ``busy_labels``, default
  ``plugins.kube.busy_labels``: ``slipway.io/busy=true`` or OpenKruiseGame's opsState
  ``Allocated``) is never deleted: it gets ``slipway.io/drain=requested`` and is skipped;
* idle outdated pods are deleted at most ``max_unavailable - unavailable`` at a time, where
  unavailable counts the pods the owners want but that are not Ready (missing, starting or
  terminating); the deletion carries the pod's resourceVersion as a precondition, so a pod that
  changed since it was read (a player arrived and the busy label was set) is not deleted;
* after each batch the cycle waits (``probe.restart_timeout``) for the deleted pods to be gone
  and the type to be back to its earlier availability; a timeout stops the type for this cycle;
* once a drained pod's busy marker is cleared, a later cycle deletes it like an idle one.

Up-to-date pods are never touched.
"""

from __future__ import annotations

import hashlib
import threading
import time

from poller import kube
from poller.artifacts.channels import sync_channels
from poller.artifacts.rollout import CycleReport
from poller.artifacts.store import ArtifactStore
from poller.logs import get_logger
from poller.settings.plugins import PluginsConfig, type_order

log = get_logger("poller.artifacts")

STAMP = "slipway.io/plugins"
TYPE_LABEL = "slipway.io/server-type"
UNKNOWN = "unknown"
DRAIN_REQUESTED = "requested"


def plugin_stamp(wanted: dict[str, str]) -> str:
    """A short, stable name for a plugin set (plugin -> jar digest)."""
    text = "\n".join(f"{p}={d}" for p, d in sorted(wanted.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_client_error(exc: BaseException) -> bool:
    """An exception of the Kubernetes client or its transport (not a bug of ours)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return isinstance(exc, (ApiException, urllib3.exceptions.HTTPError, OSError))


def pod_ready(pod) -> bool:
    if pod.metadata.deletion_timestamp is not None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def controller_of(pod):
    return next((r for r in pod.metadata.owner_references or [] if r.controller), None)


class KubePluginRollout:
    def __init__(self, cfg: PluginsConfig, store: ArtifactStore, apps_api, core_api=None, custom_api=None,
                 *, stop: threading.Event | None = None):
        from kubernetes import client

        self.cfg = cfg
        self.store = store
        self.apps = apps_api
        self.core = core_api or client.CoreV1Api(apps_api.api_client)
        self.custom = custom_api or client.CustomObjectsApi(apps_api.api_client)
        self.stop = stop or threading.Event()

    # -- reading --------------------------------------------------------------------
    def _pods(self, namespace: str) -> dict[str, list]:
        """server type -> its live (not terminating) pods, by name."""
        out: dict[str, list] = {}
        for pod in sorted(self.core.list_namespaced_pod(namespace, label_selector=TYPE_LABEL).items,
                          key=lambda p: p.metadata.name):
            if pod.metadata.deletion_timestamp is None:
                out.setdefault(pod.metadata.labels[TYPE_LABEL], []).append(pod)
        return out

    def _all_pods(self, namespace: str, type_name: str) -> list:
        return self.core.list_namespaced_pod(namespace, label_selector=f"{TYPE_LABEL}={type_name}").items

    def _replicas(self, namespace: str, api_version: str, kind: str, name: str) -> int | None:
        from kubernetes.client.exceptions import ApiException

        try:
            if api_version == "apps/v1" and kind == "ReplicaSet":
                return self.apps.read_namespaced_replica_set(name, namespace).spec.replicas or 0
            if api_version == "apps/v1" and kind == "StatefulSet":
                return self.apps.read_namespaced_stateful_set(name, namespace).spec.replicas or 0
            group, _, version = api_version.rpartition("/")
            obj = self.custom.get_namespaced_custom_object(group, version, namespace, kind.lower() + "s", name)
            return int((obj.get("spec") or {}).get("replicas") or 0)
        except (ApiException, ValueError, TypeError):
            return None

    def unavailable(self, namespace: str, type_name: str) -> int:
        """Pods of the type its owners want but that are not Ready (missing, starting, terminating)."""
        pods = self._all_pods(namespace, type_name)
        owners: dict[tuple[str, str, str], int] = {}
        wanted = 0
        for pod in pods:
            ref = controller_of(pod)
            if ref is None:
                wanted += 1 if pod.metadata.deletion_timestamp is None else 0
                continue
            key = (ref.api_version, ref.kind, ref.name)
            owners[key] = owners.get(key, 0) + (pod.metadata.deletion_timestamp is None)
        for (api_version, kind, name), live in owners.items():
            replicas = self._replicas(namespace, api_version, kind, name)
            wanted += live if replicas is None else max(replicas, live)
        return max(0, wanted - sum(1 for p in pods if pod_ready(p)))

    def busy(self, pod, type_name: str) -> bool:
        markers = self.cfg.server_types[type_name].busy_labels
        if markers is None:
            markers = self.cfg.kube.busy_labels
        labels = pod.metadata.labels or {}
        return any(labels.get(k) in values for k, values in markers.items())

    # -- the record of what each channel was at ------------------------------------------
    def _read_record(self, namespace: str) -> dict[str, str] | None:
        """server type -> stamp; None when there is no record yet."""
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.core.read_namespaced_config_map(self.cfg.kube.record_configmap, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _write_record(self, namespace: str, record: dict[str, str], *, exists: bool) -> None:
        body = {"metadata": {"name": self.cfg.kube.record_configmap,
                             "labels": {"app.kubernetes.io/managed-by": "slipway"}}, "data": record}
        if exists:
            self.core.patch_namespaced_config_map(self.cfg.kube.record_configmap, namespace, body)
        else:
            self.core.create_namespaced_config_map(namespace, body)

    def _stamp_new(self, namespace: str, pods: list, value: str) -> None:
        for pod in pods:
            annotations = pod.metadata.annotations or {}
            if STAMP not in annotations:
                self.core.patch_namespaced_pod(pod.metadata.name, namespace,
                                               {"metadata": {"annotations": {STAMP: value}}})
                pod.metadata.annotations = {**annotations, STAMP: value}

    # -- the cycle --------------------------------------------------------------------
    def cycle(self, env: str) -> CycleReport:
        """One cycle for ``env``. A failed API call is raised as the error tree's mapping of
        it (:func:`poller.kube.api_error`: RBAC refusal ``AuthError``, unreachable
        ``UpstreamError``...), never as the client's raw exception."""
        namespace = self.cfg.environments[env].kubernetes_namespace
        assert namespace is not None   # only Kubernetes environments get here
        try:
            return self._cycle(env, namespace)
        except Exception as exc:
            if _is_client_error(exc):
                raise kube.api_error(exc, f"plugin rollout in namespace {namespace}") from exc
            raise

    def _cycle(self, env: str, namespace: str) -> CycleReport:
        report = CycleReport(env)
        wanted = {t: plugin_stamp({p: a.digest for p, a in plugins.items()})
                  for t, plugins in sync_channels(self.store, self.cfg, env, report.incomplete).items()}
        found = self._read_record(namespace)
        record = found or {}
        by_type = self._pods(namespace)
        for type_name, pods in by_type.items():
            if type_name in wanted:
                self._stamp_new(namespace, pods, record.get(type_name) or UNKNOWN)
        moved = {**record, **wanted}
        if found is None or moved != record:
            self._write_record(namespace, moved, exists=found is not None)
        pending: set[str] = set()
        for type_name in type_order(self.cfg):
            if type_name not in wanted:   # incomplete: its pods keep what they run
                continue
            pods = by_type.get(type_name, [])
            outdated = [p for p in pods if (p.metadata.annotations or {}).get(STAMP) != wanted[type_name]]
            report.up_to_date += [p.metadata.name for p in pods if p not in outdated]
            if not outdated:
                continue
            pending.add(type_name)
            if any(dep in pending for dep in self.cfg.server_types[type_name].depends_on):
                report.waiting.append(type_name)
                continue
            if self._roll_type(namespace, type_name, wanted[type_name], report):
                pending.discard(type_name)
        return report

    def _roll_type(self, namespace: str, type_name: str, stamp: str, report: CycleReport) -> bool:
        """Delete what may be deleted now; True when every pod of the type runs ``stamp``."""
        from kubernetes.client import V1DeleteOptions, V1Preconditions
        from kubernetes.client.exceptions import ApiException

        limit = self.cfg.server_types[type_name].max_unavailable
        drain = self.cfg.kube.drain_annotation
        while not self.stop.is_set():
            pods = self._pods(namespace).get(type_name, [])
            self._stamp_new(namespace, pods, stamp)  # created after the record moved: they run it
            outdated = [p for p in pods if (p.metadata.annotations or {}).get(STAMP) != stamp]
            if not outdated:
                return True
            idle = []
            for pod in outdated:
                if not self.busy(pod, type_name):
                    idle.append(pod)
                    continue
                if (pod.metadata.annotations or {}).get(drain) != DRAIN_REQUESTED:
                    self.core.patch_namespaced_pod(pod.metadata.name, namespace,
                                                   {"metadata": {"annotations": {drain: DRAIN_REQUESTED}}})
                    log.info("plugins.draining", pod=pod.metadata.name, server_type=type_name)
                if pod.metadata.name not in report.draining:
                    report.draining.append(pod.metadata.name)
            down = self.unavailable(namespace, type_name)
            batch = idle[:max(0, limit - down)]
            if not batch:
                return False  # busy ones drain (or the type is short of pods); a later cycle goes on
            deleted = []
            for pod in batch:
                try:
                    self.core.delete_namespaced_pod(pod.metadata.name, namespace, body=V1DeleteOptions(
                        preconditions=V1Preconditions(uid=pod.metadata.uid,
                                                      resource_version=pod.metadata.resource_version)))
                except ApiException as exc:
                    if exc.status in (404, 409):  # gone, or changed since read (a player arrived?)
                        continue
                    raise
                log.info("plugins.restarting", pod=pod.metadata.name, server_type=type_name)
                deleted.append(pod)
            if not deleted:
                continue
            if not self._wait_replaced(namespace, type_name, deleted, down):
                report.errors.append(f"{', '.join(p.metadata.name for p in deleted)}: not replaced by a ready "
                                     f"pod within {self.cfg.probe.restart_timeout:g}s")
                return False
            for pod in deleted:
                report.restarted.append(pod.metadata.name)
                if pod.metadata.name in report.draining:
                    report.draining.remove(pod.metadata.name)
        return False

    def _wait_replaced(self, namespace: str, type_name: str, deleted: list, down_before: int) -> bool:
        uids = {p.metadata.uid for p in deleted}
        deadline = time.monotonic() + self.cfg.probe.restart_timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            pods = self._all_pods(namespace, type_name)
            if not any(p.metadata.uid in uids for p in pods) and \
                    self.unavailable(namespace, type_name) <= down_before:
                return True
            self.stop.wait(0.2)
        return False


def apps_api(kubeconfig: str | None):
    """An ``AppsV1Api`` from ``kubeconfig``, else in-cluster, else ``~/.kube/config``
    (:func:`poller.kube.api_client`, the one builder)."""
    from kubernetes import client

    return client.AppsV1Api(kube.api_client(kubeconfig))
