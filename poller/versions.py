"""Classify git tags and image tags: release, prerelease, or something to ignore.

Only ``X.Y.Z`` and ``vX.Y.Z`` (with optional semver prerelease and build parts) are
versions. Anything else (``latest``, ``v1.2``, ``release-3``) is ``IGNORED``; it never
raises, so an odd tag can't crash a cycle. Input longer than :data:`MAX_VERSION_LENGTH` (a
hostile upstream's tag of thousands of digits) is not a version either: it is rejected before
the regular expression or ``int()`` ever see it.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

_SEMVER = re.compile(
    r"^(?P<v>v)?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


#: Longest text that may be a version. Real tags are far shorter; the bound keeps parsing cheap.
MAX_VERSION_LENGTH = 128
#: Digits a numeric identifier may have (keeps ``int()`` far from its digit limit).
_MAX_NUMBER_DIGITS = 20


class TagKind(enum.Enum):
    RELEASE = "release"
    PRERELEASE = "prerelease"
    IGNORED = "ignored"


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed semantic version. Ordering follows semver 2.0.0 precedence."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            s += "-" + ".".join(self.prerelease)
        if self.build:
            s += "+" + self.build
        return s

    @property
    def image_tag(self) -> str:
        """The tag used in a registry: no ``v``, and ``+`` (not allowed in tags) as ``_``."""
        return str(self).replace("+", "_")

    def _key(self):
        pre: tuple = ()
        if self.prerelease:
            pre = tuple((0, int(p), "") if p.isdigit() and len(p) <= _MAX_NUMBER_DIGITS
                        else (1, 0, p) for p in self.prerelease)
        # A release sorts after all of its prereleases.
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def parse_version(text: str) -> Version | None:
    """Parse ``X.Y.Z`` or ``vX.Y.Z`` (semver 2.0.0). Returns ``None`` for anything else."""
    if not isinstance(text, str) or len(text) > MAX_VERSION_LENGTH:
        return None
    return _parse_version(text)


@functools.lru_cache(maxsize=8192)   # every cycle parses the same tags again; a Version is immutable
def _parse_version(text: str) -> Version | None:
    m = _SEMVER.match(text.strip())
    if not m or any(len(m.group(k)) > _MAX_NUMBER_DIGITS for k in ("major", "minor", "patch")):
        return None
    pre = tuple(m.group("pre").split(".")) if m.group("pre") else ()
    return Version(int(m.group("major")), int(m.group("minor")), int(m.group("patch")), pre,
                   m.group("build") or "")


def classify_tag(name: str) -> tuple[TagKind, Version | None]:
    """Return the kind of a git tag and its version (``None`` when ignored)."""
    v = parse_version(name)
    if v is None:
        return TagKind.IGNORED, None
    return (TagKind.PRERELEASE if v.is_prerelease else TagKind.RELEASE), v
