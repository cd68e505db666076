"""The narrow interface every source (git remote, GitLab, GitHub) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

#: Most refs (branches and tags) Slipway reads from one source in one poll. An upstream that
#: offers more is refused (a failure of that source), so a hostile one can't exhaust memory.
MAX_REFS = 50_000


@dataclass(frozen=True)
class RefSnapshot:
    """What a source looks like upstream right now.

    ``head`` is the commit the watched branch points at (``None`` when the branch does not
    exist). ``tags`` maps every tag name to the *commit* it points at (annotated tags are
    peeled). ``unchanged`` is ``True`` when the upstream told us cheaply that nothing moved
    (HTTP 304, same newest event id); ``head``/``tags`` are then the previous observation.
    """

    branch: str
    head: str | None
    tags: dict[str, str] = field(default_factory=dict)
    unchanged: bool = False

    def fingerprint(self) -> tuple:
        return (self.branch, self.head, tuple(sorted(self.tags.items())))


@runtime_checkable
class Source(Protocol):
    """A place code comes from. Implementations live in ``poller.sources.<kind>``."""

    name: str
    branch: str

    def poll(self) -> RefSnapshot:
        """Read the branch head and all tags, in as few requests as the upstream allows.

        Raises :class:`poller.errors.UpstreamError` for temporary failures (5xx, 429,
        connection refused) and :class:`poller.errors.SourceError` /
        :class:`poller.errors.AuthError` for permanent ones.
        """

    def write_archive(self, sha: str, out: BinaryIO) -> None:
        """Write an uncompressed tar of the tree at commit ``sha`` to ``out``.

        Member paths are relative to the repository root (no leading directory). This is
        the exact commit, never whatever a branch points to by now.
        """

    def create_tag(self, name: str, sha: str) -> None:
        """Create the tag ``name`` on commit ``sha`` upstream (production rollbacks).

        Refused by the upstream when the tag exists; that refusal is a
        :class:`poller.errors.SlipwayError` naming the tag.
        """

    def web_url(self) -> str:
        """A URL for humans and for the ``org.opencontainers.image.source`` label.

        Never contains credentials.
        """
