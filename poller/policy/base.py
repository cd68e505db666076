"""What every update policy answers: "should this move, and to what?".

A policy sees the tag (and digest) a deployment runs now and what the registry offers,
and returns a :class:`Move` or ``None``. Policies are pure: no I/O, no clock, so each is
tested with plain values. They never propose a downgrade.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Running:
    """What a deployment runs now: ``tag`` (may be ``None`` for digest-only refs) and digest."""

    tag: str | None
    digest: str | None = None
    #: every digest the running content is known under (also when ``digest`` is None)
    digests: tuple[str, ...] = ()

    def runs(self, digest: str) -> bool:
        return digest == self.digest or digest in self.digests


@dataclass(frozen=True)
class Offer:
    """What the registry offers this cycle: every tag (when listed) and digests of mutable tags."""

    tags: tuple[str, ...] = ()
    digests: tuple[tuple[str, str], ...] = ()

    def digest_of(self, tag: str) -> str | None:
        return dict(self.digests).get(tag)


@dataclass(frozen=True)
class Move:
    """Move to ``tag`` (pinned to ``digest`` when following a mutable tag)."""

    tag: str
    digest: str | None
    reason: str
    major: bool = False  # crosses a major version (``approval: major`` asks a person)

    @property
    def ref(self) -> str:
        """How the move is named in approvals and the audit: ``1.4.0`` or ``staging@sha256:..``."""
        return f"{self.tag}@{self.digest}" if self.digest else self.tag


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def mutable_tags(self) -> tuple[str, ...]:
        """The tags whose digest must be read (one ``HEAD`` each) for this policy."""
        ...

    @property
    def lists_tags(self) -> bool:
        """Whether the registry's tag list is needed."""
        ...

    def decide(self, running: Running, offer: Offer, *, skip: Iterable[str] = ()) -> Move | None:
        """The move to make, or ``None``. ``skip``: refs a person rejected (never proposed again)."""
        ...
