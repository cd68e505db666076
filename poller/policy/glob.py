"""Follow tags matching a shell-style pattern (``build-*``), newest by natural/semver order."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from poller.policy.base import Move, Offer, Running
from poller.policy.ordering import newest_above
from poller.versions import parse_version


@dataclass(frozen=True)
class GlobPolicy:
    pattern: str
    prereleases: bool = False
    mutable_tags: tuple[str, ...] = ()
    lists_tags: bool = True

    @property
    def name(self) -> str:
        return f"glob:{self.pattern}"

    def decide(self, running: Running, offer: Offer, *, skip: Iterable[str] = ()) -> Move | None:
        skipped = set(skip)
        current = running.tag if running.tag and fnmatch.fnmatchcase(running.tag, self.pattern) else None
        cands = []
        for tag in offer.tags:
            if tag in skipped or not fnmatch.fnmatchcase(tag, self.pattern):
                continue
            v = parse_version(tag)
            if v is not None and v.is_prerelease and not self.prereleases:
                continue
            cands.append((tag, tag))
        best = newest_above(current, cands)
        if best is None or best[0] == running.tag:
            return None
        return Move(tag=best[0], digest=None,
                    reason=f"{self.name}: {best[0]} is the newest matching tag (running {running.tag})")
