"""Where an image runs: one narrow interface in front of Kubernetes, Helm and Docker hosts.

A target reports the image reference it runs now and applies a new one, returning once the
target is healthy or raising :class:`TargetError` (reported, never retried in a loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from poller.errors import PermanentError


class TargetError(PermanentError):
    """Applying an image failed or the target did not become healthy in time."""


@dataclass(frozen=True)
class ImageRef:
    """``host/repo:tag@sha256:..`` split into its parts (tag and digest optional)."""

    repository: str
    tag: str | None = None
    digest: str | None = None
    #: every manifest digest the running content is known under (a Docker engine's
    #: ``RepoDigests``), also when the reference names none. Not part of its identity.
    digests: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        rest, _, digest = text.partition("@")
        name, tag = rest, None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            name, _, tag = rest.rpartition(":")
        return cls(repository=name, tag=tag or None, digest=digest or None)

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def ref(self) -> str:
        """The short form used in approvals and the audit: ``1.4.0``, ``staging@sha256:..``."""
        if self.tag and self.digest:
            return f"{self.tag}@{self.digest}"
        return self.tag or self.digest or ""


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
