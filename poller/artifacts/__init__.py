"""Plugin artifacts: .jar files in the registry, fetched by servers at start-up, and the
restart of servers that run an outdated plugin (see :mod:`poller.artifacts.rollout`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from poller.artifacts.slots import QuorumSlots
from poller.artifacts.store import ArtifactStore

FETCH_SCRIPT = Path(__file__).with_name("fetch-plugins.sh")


def open_store(cfg) -> ArtifactStore:
    """The artifact store for a loaded :class:`~poller.config.Config`."""
    from poller.registry.client import RegistryClient

    return ArtifactStore(RegistryClient(cfg.registry), cfg.plugins.repository)


def docker_client(cfg):
    """The servers' engine: ``plugins.docker_url``, else ``docker.base_url``, else the
    environment (``DOCKER_HOST``...), else the local socket (:mod:`poller.docker_engine`)."""
    from poller.docker_engine import client_factory

    return client_factory(cfg.plugins.docker_url, cfg.docker.base_url)()


def rollout_for(cfg, env: str, *, open_fleet: Callable[[], QuorumSlots]):
    """The plugin rollout that serves ``env``: Kubernetes when it names a namespace, else Docker.
    ``open_fleet``: the fleet's quorum slots (:mod:`poller.artifacts.slots`), opened when some
    server type shares a fleet service's quorum (:func:`uses_fleet`)."""
    environment = cfg.plugins.environments.get(env)
    if environment is not None and environment.kubernetes_namespace:
        from poller.artifacts.kube import KubePluginRollout, apps_api

        return KubePluginRollout(cfg.plugins, open_store(cfg), apps_api(cfg.plugins.kubeconfig))
    from poller.artifacts.rollout import PluginRollout

    return PluginRollout(cfg.plugins, open_store(cfg), docker_client(cfg),
                         fleet=open_fleet() if uses_fleet(cfg) else None)


def uses_fleet(cfg) -> bool:
    """True when some server type shares a fleet service's quorum (``fleet_service``, or a
    server type named like a fleet service); a ``fleet_service`` naming no service is a
    :class:`~poller.errors.ConfigError`."""
    services = cfg.fleet.services
    for name, t in cfg.plugins.server_types.items():
        if t.fleet_service and t.fleet_service not in services:
            from poller.errors import ConfigError

            raise ConfigError(f"plugins.server_types.{name}.fleet_service: no service "
                              f"'{t.fleet_service}' in fleet.services")
    return any((t.fleet_service or name) in services for name, t in cfg.plugins.server_types.items())
