"""Where an image runs: one narrow interface in front of Kubernetes, Helm and Docker hosts.

A target reports the image reference it runs now and applies a new one, returning once the
target is healthy or raising :class:`TargetError` (reported, never retried in a loop).
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
