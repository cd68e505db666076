"""What a plugin restart needs from the fleet: one of a service's quorum slots, held while the
server is down, so plugin restarts and the fleet's image switches of the same service together
never take more servers down than the service allows.

Artifacts depend on this Protocol only; the fleet's etcd state
(:class:`poller.fleet.state.FleetState`) implements it, and whoever composes the two (the
commands, ``poller run``) passes it in. Artifacts never import the fleet.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol


class QuorumSlots(Protocol):
    def quorum_services(self) -> Collection[str]:
        """The services whose slots can be held."""
        ...

    def hold_slot(self, service: str, holder: str, *, ttl: int, unless: tuple[str, ...] = ()) -> int | None:
        """Hold one of ``service``'s slots for ``holder`` (released by itself after ``ttl``
        seconds should the holder die); ``None`` when none is free or one of ``unless`` holds a
        slot. The returned handle is given back to :meth:`free_slot`."""
        ...

    def free_slot(self, service: str, holder: str, handle: int) -> None:
        """Give back what :meth:`hold_slot` returned."""
        ...
