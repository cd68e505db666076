"""What a plugin restart needs from the fleet: one of a service's quorum slots, held while the
server is down, so plugin restarts and the fleet's image switches of the same service together
never take more servers down than the service allows.

Artifacts depend on this Protocol only; :class:`poller.fleet.slots.FleetSlots` implements it
with the agents' etcd slots, and whoever composes the two (the commands, ``poller run``) passes
it in. Artifacts never import the fleet.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol


class QuorumSlots(Protocol):
    def services(self) -> Collection[str]:
        """The services whose slots can be taken."""
        ...

    def take(self, service: str, holder: str, *, ttl: int, unless: tuple[str, ...] = ()) -> int | None:
        """Hold one of ``service``'s slots for ``holder`` (at most ``ttl`` seconds, should the
        holder die); ``None`` when none is free or one of ``unless`` holds a slot. The returned
        handle is given back to :meth:`release`."""
        ...

    def release(self, service: str, holder: str, handle: int) -> None:
        """Give back what :meth:`take` returned."""
        ...
