"""Plugin rollouts for servers on Kubernetes: bump a pod template annotation.

Server Deployments carry the label ``slipway.io/server-type`` in the environment's namespace
and run ``fetch-plugins.sh`` at start (e.g. an init container) with their channel tag. When
the plugin set a type must run changes, its Deployments get a new
``slipway.io/plugins`` stamp on the pod template, so Kubernetes replaces the pods and the
new ones fetch the new jars. Quorum is the Deployment's own ``maxUnavailable`` (set to the
type's ``max_unavailable``, no surge); a type is only stamped once the types it depends on
are fully rolled out. Deployments already carrying the right stamp are left alone.

Draining players is the pods' business on Kubernetes: a ``preStop`` hook that waits for the
server to empty, with a matching ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import hashlib

from poller.artifacts.channels import sync_channels
from poller.artifacts.rollout import CycleReport
from poller.artifacts.settings import PluginsConfig, type_order
from poller.artifacts.store import ArtifactStore

STAMP = "slipway.io/plugins"
TYPE_LABEL = "slipway.io/server-type"


def plugin_stamp(wanted: dict[str, str]) -> str:
    """A short, stable name for a plugin set (plugin -> jar digest)."""
    text = "\n".join(f"{p}={d}" for p, d in sorted(wanted.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _settled(dep) -> bool:
    spec, status = dep.spec.replicas or 0, dep.status
    return ((status.observed_generation or 0) >= (dep.metadata.generation or 0)
            and (status.updated_replicas or 0) == spec and (status.available_replicas or 0) == spec
            and (status.replicas or 0) == spec)


class KubePluginRollout:
    def __init__(self, cfg: PluginsConfig, store: ArtifactStore, apps_api):
        self.cfg = cfg
        self.store = store
        self.apps = apps_api

    def cycle(self, env: str) -> CycleReport:
        report = CycleReport(env)
        namespace = self.cfg.environments[env].kubernetes_namespace
        wanted = {t: plugin_stamp({p: a.digest for p, a in plugins.items()})
                  for t, plugins in sync_channels(self.store, self.cfg, env).items()}
        by_type: dict[str, list] = {}
        for dep in self.apps.list_namespaced_deployment(namespace, label_selector=TYPE_LABEL).items:
            by_type.setdefault(dep.metadata.labels[TYPE_LABEL], []).append(dep)
        pending: set[str] = set()
        for type_name in type_order(self.cfg):
            deps = by_type.get(type_name, [])
            stale = [d for d in deps if (d.spec.template.metadata.annotations or {}).get(STAMP) != wanted[type_name]]
            if stale or not all(_settled(d) for d in deps):
                pending.add(type_name)
            report.up_to_date += [d.metadata.name for d in deps if d not in stale]
            if not stale:
                continue
            if any(dep in pending for dep in self.cfg.server_types[type_name].depends_on):
                report.waiting.append(type_name)
                continue
            limit = self.cfg.server_types[type_name].max_unavailable
            for d in stale:
                self.apps.patch_namespaced_deployment(d.metadata.name, namespace, {
                    "spec": {"strategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxUnavailable": limit, "maxSurge": 0}},
                             "template": {"metadata": {"annotations": {STAMP: wanted[type_name]}}}}})
                report.restarted.append(d.metadata.name)
        return report


def apps_api(kubeconfig: str | None):
    """An ``AppsV1Api`` from ``kubeconfig``, else in-cluster, else ``~/.kube/config``."""
    from kubernetes import client, config

    if kubeconfig:
        return client.AppsV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api()
