"""Build a deployment's target (and, for game servers, its pod rollout and reloader) from its
settings, caching one Kubernetes client and one informer set per cluster.

It lives with the updater, its user, because it joins two domains below it: the places an
image runs (:mod:`poller.targets`) and the staged pod rollouts and reloaders
(:mod:`poller.rollout`, which itself reads :mod:`poller.targets.base`). Inside ``targets`` it
made targets and rollout import each other."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from poller.settings.updates import DeploymentConfig, UpdatesConfig
from poller.targets.base import Target

OKG_OWNER_LABEL = "game.kruise.io/owner-gss"


def docker_factory(*urls: str | None) -> Callable:
    from poller.docker_engine import client_factory

    return client_factory(*urls)


class TargetFactory:
    """Caches one Kubernetes API client per kubeconfig; everything else is cheap to build."""

    def __init__(self, updates: UpdatesConfig, *, docker_base_url: str | None = None,
                 rollout_timeout: float = 300.0, informers: bool = True):
        """``informers``: read Kubernetes workloads and pods from list+watch caches (one per
        cluster, kind and namespace) instead of one API-server read each time."""
        self.updates = updates
        self.docker_base_url = docker_base_url
        self.rollout_timeout = rollout_timeout
        self.use_informers = informers
        self._apis: dict[tuple, Any] = {}
        self._informers: dict[tuple, Any] = {}

    def _key(self, kubeconfig: str | None, context: str | None) -> tuple:
        path = kubeconfig or self.updates.kubeconfig
        return (os.path.expanduser(path) if path else None, context)

    def informers(self, kubeconfig: str | None, context: str | None = None):
        """The :class:`~poller.targets.informer.InformerSet` of one cluster (``None``: disabled)."""
        if not self.use_informers:
            return None
        from poller.targets.informer import InformerSet

        key = self._key(kubeconfig, context)
        if key not in self._informers:
            self._informers[key] = InformerSet(self.kube_api(kubeconfig, context))
        return self._informers[key]

    def cluster(self, d: DeploymentConfig) -> str:
        """Which cluster (or Docker engine, or helm) a deployment's writes go to: the key of
        the per-cluster concurrency limit."""
        t = d.target
        if t.kubernetes is not None:
            path, context = self._key(t.kubernetes.kubeconfig, t.kubernetes.context)
            return f"kubernetes:{path}:{context}"
        if t.helm is not None:
            return f"helm:{self._key(t.helm.kubeconfig, None)[0]}"
        assert t.docker is not None   # the settings require exactly one target kind
        return f"docker:{t.docker.base_url or self.docker_base_url or ''}"

    def close(self) -> None:
        for s in self._informers.values():
            s.stop()

    def kube_api(self, kubeconfig: str | None, context: str | None = None):
        """The cluster's client from :func:`poller.kube.api_client` (retries off, one timeout
        policy; informer watches pass their own). No kubeconfig (neither the deployment's nor
        ``updates.kubeconfig``): the pod's service account, never the user's default kubeconfig."""
        from poller import kube

        path = kubeconfig or self.updates.kubeconfig
        path = os.path.expanduser(path) if path else None
        key = (path, context)
        if key not in self._apis:
            self._apis[key] = kube.api_client(path, context=context, in_cluster=path is None)
        return self._apis[key]

    def target(self, d: DeploymentConfig) -> Target:
        t = d.target
        if t.kubernetes is not None:
            from poller.targets.kubernetes import KubernetesWorkload

            k = t.kubernetes
            timeout = d.rollout.health_timeout if d.rollout else self.rollout_timeout
            informers = self.informers(k.kubeconfig, k.context)
            w = KubernetesWorkload(self.kube_api(k.kubeconfig, k.context), kind=k.kind, name=k.name,
                                   namespace=k.namespace, container=k.container, timeout=timeout,
                                   wait_rollout=d.rollout is None,
                                   informer=informers.get(k.kind, k.namespace) if informers else None)
            w.informers = informers  # type: ignore[attr-defined]  # read by the pod rollouts
            return w
        if t.helm is not None:
            from poller.targets.helm import HelmRelease

            h = t.helm
            kubeconfig = h.kubeconfig or self.updates.kubeconfig
            return HelmRelease(release=h.release, namespace=h.namespace, chart=h.chart, repository=d.image,
                               value_path=h.value_path, value_format=h.value_format, repo=h.repo,
                               version=h.version, executable=h.helm or self.updates.helm,
                               kubeconfig=os.path.expanduser(kubeconfig) if kubeconfig else None,
                               timeout=self.rollout_timeout)
        from poller.targets.docker_host import DockerContainer

        assert t.docker is not None   # the settings require exactly one target kind
        return DockerContainer(docker_factory(t.docker.base_url, self.docker_base_url),
                               container=t.docker.container, timeout=self.rollout_timeout)

    def selector(self, d: DeploymentConfig, target) -> dict[str, str]:
        if d.rollout and d.rollout.selector:
            return dict(d.rollout.selector)
        k = d.target.kubernetes
        assert k is not None   # only Kubernetes targets have pod selectors
        if k.kind == "GameServerSet":
            return {OKG_OWNER_LABEL: k.name}
        return dict(((target.read().get("spec") or {}).get("selector") or {}).get("matchLabels") or {})

    def reloader(self, d: DeploymentConfig):
        from poller.rollout.reload import (
            DockerExecReloader,
            HttpReloader,
            KubernetesExecReloader,
        )

        if d.reload is None:
            return None
        if d.reload.http is not None:
            return HttpReloader(d.reload.http)
        assert d.reload.exec is not None   # the settings require http or exec
        if d.target.kubernetes is not None:
            k = d.target.kubernetes
            return KubernetesExecReloader(self.kube_api(k.kubeconfig, k.context), d.reload.exec,
                                          namespace=k.namespace, container=k.container)
        if d.target.docker is not None:
            return DockerExecReloader(docker_factory(d.target.docker.base_url, self.docker_base_url),
                                      d.reload.exec)
        return None

    def pod_rollout(self, d: DeploymentConfig, target, control, bus=None, digest_of=None):
        from poller.rollout.pods import PodRollout

        k = d.target.kubernetes
        assert k is not None and d.rollout is not None   # a pod rollout is of a Kubernetes target
        informers = self.informers(k.kubeconfig, k.context)
        return PodRollout(self.kube_api(k.kubeconfig, k.context), d.rollout, namespace=k.namespace,
                          container=k.container, selector=self.selector(d, target), control=control,
                          reloader=self.reloader(d), bus=bus, digest_of=digest_of,
                          pods=informers.get("Pod", k.namespace) if informers else None)
