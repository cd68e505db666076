"""How non-semver tags are ordered for ``glob`` and ``regex`` policies.

Semantic versions sort by semver precedence; anything else sorts "naturally" (digit runs
compared as numbers: ``build-10`` after ``build-9``). Semver tags sort after non-semver ones.
"""

from __future__ import annotations

import re

from poller.versions import parse_version

_RUN = re.compile(r"(\d+)")


def tag_key(text: str) -> tuple:
    v = parse_version(text)
    if v is not None:
        return (1, v._key(), ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _RUN.split(text) if p)
    return (0, (), parts)


def newest_above(current: str | None, candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
    """From ``(tag, sort_text)`` pairs, the highest strictly above ``current``'s sort text."""
    if not candidates:
        return None
    best = max(candidates, key=lambda c: tag_key(c[1]))
    if current is not None and tag_key(best[1]) <= tag_key(current):
        return None
    return best
