"""Where an image runs: one narrow interface in front of Kubernetes, Helm and Docker hosts.

A target reports the image reference it runs now and applies a new one, returning once the
target is healthy or raising :class:`TargetError` (reported, never retried in a loop). A
:class:`Watched` target can also return as soon as the change is made (``wait=False``) and be
asked about its health later, so waiting for a rollout never holds the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from poller.errors import PermanentError
from poller.imageref import ImageRef


class TargetError(PermanentError):
    """Applying an image failed or the target did not become healthy in time."""


@dataclass
class Applied:
    """What an apply did, for the audit record."""

    detail: dict = field(default_factory=dict)


class Target(Protocol):
    description: str

    def current(self) -> ImageRef | None:
        """The image the target is configured to run now (``None``: cannot tell)."""
        ...

    def apply(self, image: ImageRef) -> Applied:
        """Switch to ``image`` and wait until healthy; :class:`TargetError` on failure."""
        ...


class Watched(Target, Protocol):
    """A target whose rollout is judged on later calls instead of waited for."""

    timeout: float   #: seconds a rollout may take before it is reported failed

    def apply(self, image: ImageRef, *, wait: bool = True) -> Applied:
        """Switch to ``image``; with ``wait=False`` return once the switch is made, before health.
        The returned ``detail`` dict may be completed by later :meth:`health` calls."""
        ...

    def health(self, generation: int | None) -> tuple[bool, str]:
        """(healthy, why not) of the last apply, without blocking; :class:`TargetError` when it
        failed for good (what could be undone is undone first)."""
        ...

    def expire(self) -> None:
        """The last apply outlived :attr:`timeout`: undo what must not stay half done (the
        caller reports it failed)."""
        ...
