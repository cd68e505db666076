"""Follow tags matching a regular expression; a ``version`` group (or the first group), when
present, is what is ordered (``^release-(?P<version>\\d+\\.\\d+\\.\\d+)$``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from poller.policy.base import Move, Offer, Running
from poller.policy.ordering import newest_above
from poller.versions import parse_version


@dataclass(frozen=True)
class RegexPolicy:
    pattern: str
    prereleases: bool = False
    mutable_tags: tuple[str, ...] = ()
    lists_tags: bool = True
    _compiled: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    @property
    def name(self) -> str:
        return f"regex:{self.pattern}"

    def _sort_text(self, tag: str) -> str | None:
        m = self._compiled.fullmatch(tag)
        if not m:
            return None
        if "version" in self._compiled.groupindex:
            return m.group("version")
        return m.group(1) if self._compiled.groups else tag

    def decide(self, running: Running, offer: Offer, *, skip: Iterable[str] = ()) -> Move | None:
        skipped = set(skip)
        current = self._sort_text(running.tag) if running.tag else None
        cands = []
        for tag in offer.tags:
            text = None if tag in skipped else self._sort_text(tag)
            if text is None:
                continue
            v = parse_version(text)
            if v is not None and v.is_prerelease and not self.prereleases:
                continue
            cands.append((tag, text))
        best = newest_above(current, cands)
        if best is None or best[0] == running.tag:
            return None
        return Move(tag=best[0], digest=None,
                    reason=f"{self.name}: {best[0]} is the newest matching tag (running {running.tag})")
