"""Follow semantic-version tags: ``patch``, ``minor``, ``major`` or ``all`` (with prereleases).

* ``patch``: same major.minor, higher patch.  ``minor``: same major.  ``major``/``all``: any higher.
* Prereleases only when ``prereleases`` is true (``all`` implies it).
* Never a downgrade: only versions strictly above the running one; a running tag that is not
  a version gives no baseline, so nothing moves (say ``pin`` to start from a version).
* ``v1.2.3`` and ``1.2.3`` are the same version; the tag as pushed is what is deployed.
* :meth:`SemverPolicy.next_major` is what ``approval: major|all`` surfaces for a person: the
  newest version in a higher major, whatever the level (the README's policy x approval table).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from poller.policy.base import Move, Offer, Running
from poller.versions import Version, parse_version

Level = Literal["patch", "minor", "major", "all"]


@dataclass(frozen=True)
class SemverPolicy:
    level: Level
    prereleases: bool = False
    mutable_tags: tuple[str, ...] = ()
    lists_tags: bool = True

    @property
    def name(self) -> str:
        return f"semver:{self.level}"

    def _eligible(self, current: Version, cand: Version) -> bool:
        return cand > current and not (cand.is_prerelease and not (self.prereleases or self.level == "all"))

    def _allowed(self, current: Version, cand: Version) -> bool:
        if not self._eligible(current, cand):
            return False
        if self.level == "patch":
            return (cand.major, cand.minor) == (current.major, current.minor)
        if self.level == "minor":
            return cand.major == current.major
        return True

    def decide(self, running: Running, offer: Offer, *, skip: Iterable[str] = (),
               same_major: bool = False) -> Move | None:
        """The newest version the level allows (``same_major``: and in the running major)."""
        return self._best(running, offer, skip, lambda cur, cand: self._allowed(cur, cand) and (
            not same_major or cand.major == cur.major), "is the newest allowed version")

    def next_major(self, running: Running, offer: Offer, *, skip: Iterable[str] = ()) -> Move | None:
        """The newest version in a higher major than the running one, whatever the level."""
        return self._best(running, offer, skip,
                          lambda cur, cand: self._eligible(cur, cand) and cand.major > cur.major,
                          "is a new major version")

    def _best(self, running: Running, offer: Offer, skip: Iterable[str], allowed, why: str) -> Move | None:
        current = parse_version(running.tag) if running.tag else None
        if current is None:
            return None
        skipped = set(skip)
        best: tuple[Version, str] | None = None
        for tag in offer.tags:
            if tag in skipped:
                continue
            cand = parse_version(tag)
            if cand is None or not allowed(current, cand):
                continue
            if best is None or cand > best[0]:
                best = (cand, tag)
        if best is None:
            return None
        version, tag = best
        return Move(tag=tag, digest=None, major=version.major > current.major,
                    reason=f"{self.name}: {running.tag} -> {tag} {why}")
