"""The fleet's etcd quorum slots for holders that are not machines' agents: the plugin
restarts (:class:`poller.artifacts.slots.QuorumSlots`).

A slot is taken with the agents' guard transaction (:meth:`FleetState.take_named_slot`) under
its own lease, so a holder that dies releases it when the lease expires.
"""

from __future__ import annotations

from collections.abc import Collection

from poller.errors import ConfigError
from poller.fleet.state import FleetState
from poller.settings.fleet import FleetConfig
from poller.settings.plugins import PluginsConfig


class FleetSlots:
    def __init__(self, state: FleetState):
        self.state = state

    def services(self) -> Collection[str]:
        return self.state.cfg.services.keys()

    def take(self, service: str, holder: str, *, ttl: int, unless: tuple[str, ...] = ()) -> int | None:
        lease = self.state.etcd.grant(ttl)
        if self.state.take_named_slot(service, holder, lease, unless=unless):
            return lease
        self.state.etcd.revoke(lease)
        return None

    def release(self, service: str, holder: str, handle: int) -> None:
        self.state.release_slot(service, holder)
        self.state.etcd.revoke(handle)


def plugin_slots(plugins: PluginsConfig, fleet: FleetConfig) -> FleetSlots | None:
    """The fleet's slots when some plugin server type shares a fleet service's quorum (its
    ``fleet_service``, default the service of the same name), else None."""
    services = fleet.services
    for name, t in plugins.server_types.items():
        if t.fleet_service and t.fleet_service not in services:
            raise ConfigError(f"plugins.server_types.{name}.fleet_service: no service "
                              f"'{t.fleet_service}' in fleet.services")
    if not any((t.fleet_service or name) in services for name, t in plugins.server_types.items()):
        return None
    from poller.fleet import open_state

    return FleetSlots(open_state(fleet))
