"""Plugin artifacts: .jar files in the registry, fetched by servers at start-up, and the
restart of servers that run an outdated plugin (see :mod:`poller.artifacts.rollout`)."""

from __future__ import annotations

from pathlib import Path

FETCH_SCRIPT = Path(__file__).with_name("fetch-plugins.sh")


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
