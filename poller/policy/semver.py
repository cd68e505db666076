"""Follow semantic-version tags: ``patch``, ``minor``, ``major`` or ``all`` (with prereleases).

* ``patch``: same major.minor, higher patch.  ``minor``: same major.  ``major``/``all``: any higher.
* Prereleases only when ``prereleases`` is true (``all`` implies it).
* Never a downgrade: only versions strictly above the running one; a running tag that is not
  a version gives no baseline, so nothing moves (say ``pin`` to start from a version).
* ``v1.2.3`` and ``1.2.3`` are the same version; the tag as pushed is what is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

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

    def _allowed(self, current: Version, cand: Version) -> bool:
        if cand <= current:
            return False
        if cand.is_prerelease and not (self.prereleases or self.level == "all"):
            return False
        if self.level == "patch":
            return (cand.major, cand.minor) == (current.major, current.minor)
        if self.level == "minor":
            return cand.major == current.major
        return True

    def decide(self, running: Running, offer: Offer, *, skip: Iterable[str] = ()) -> Move | None:
        current = parse_version(running.tag) if running.tag else None
        if current is None:
            return None
        skipped = set(skip)
        best: tuple[Version, str] | None = None
        for tag in offer.tags:
            if tag in skipped:
                continue
            cand = parse_version(tag)
            if cand is None or not self._allowed(current, cand):
                continue
            if best is None or cand > best[0]:
                best = (cand, tag)
        if best is None:
            return None
        version, tag = best
        return Move(tag=tag, digest=None, major=version.major > current.major,
                    reason=f"{self.name}: {running.tag} -> {tag} is the newest allowed version")
