"""Follow a mutable tag (``staging``) by digest: move when the tag points somewhere new.

The deployment is written as ``repo:tag@sha256:...`` so the rollout happens and the running
content is known. A digest a person rejected is never proposed again (a newer push is).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from poller.policy.base import Move, Offer, Running


@dataclass(frozen=True)
class DigestPolicy:
    tag: str
    lists_tags: bool = False

    @property
    def name(self) -> str:
        return f"digest:{self.tag}"

    @property
    def mutable_tags(self) -> tuple[str, ...]:
        return (self.tag,)

    def decide(self, running: Running, offer: Offer, *, skip: Iterable[str] = ()) -> Move | None:
        digest = offer.digest_of(self.tag)
        if digest is None or running.runs(digest):
            return None
        move = Move(tag=self.tag, digest=digest,
                    reason=f"{self.name}: tag now points at {digest[:19]} "
                           f"(running {running.digest[:19] if running.digest else 'no digest'})")
        return None if move.ref in set(skip) else move
