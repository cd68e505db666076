"""Image references: ``host/repo:tag@sha256:..`` split into its parts, in one place.

The bottom layer (imports nothing of Slipway), so settings validators, the fleet, the release
board and the commands parse references the same way instead of by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    @property
    def name(self) -> str:
        """The last component of the repository (``game-server``)."""
        return self.repository.rsplit("/", 1)[-1]
