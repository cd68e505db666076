"""Re-pack hosted-service source archives so member paths are repository-relative.

GitLab and GitHub both wrap a repository archive in one top-level directory
(``<project>-<ref>-<sha>/``, ``<owner>-<repo>-<short sha>/``). :func:`strip_leading_dir`
streams such an archive into an uncompressed tar without that directory, which is what
:meth:`poller.sources.base.Source.write_archive` promises.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable
from typing import Any, BinaryIO, Literal

from poller.errors import SourceError

Compression = Literal["", "gz", "bz2", "xz"]


def strip_leading_dir(src_fileobj: BinaryIO, out: BinaryIO, compression: Compression = "") -> int:
    """Copy the tar in ``src_fileobj`` to ``out`` (uncompressed), dropping its top directory.

    Both sides are read and written as streams, so neither needs to be seekable. Every
    member must live under the same single top-level directory; an archive that does not
    (or that names a path outside the tree) is refused with :class:`SourceError`.
    Returns the number of members written.
    """
    prefix: str | None = None
    written = 0
    read_mode: Any = f"r|{compression}"  # typeshed wants a Literal per mode
    try:
        with tarfile.open(fileobj=src_fileobj, mode=read_mode) as src, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst:
            for member in src:
                top, _, rest = member.name.strip("/").partition("/")
                if prefix is None:
                    prefix = top
                if top != prefix:
                    raise SourceError(f"archive member {member.name!r} is outside the top-level "
                                      f"directory {prefix!r}")
                if not rest:
                    continue  # the top-level directory itself
                member.name = _safe(rest)
                if member.islnk():
                    member.linkname = _safe(member.linkname.strip("/").partition("/")[2])
                data = src.extractfile(member) if member.isreg() else None
                dst.addfile(member, data)
                written += 1
    except tarfile.TarError as exc:
        raise SourceError(f"archive is not a valid tar: {exc}") from exc
    return written


def _safe(name: str) -> str:
    """Refuse absolute paths and ``..`` so a hostile archive cannot escape the tree."""
    norm = posixpath.normpath(name)
    if norm.startswith(("/", "../")) or norm == "..":
        raise SourceError(f"archive member {name!r} escapes the repository root")
    return norm


def chunk_stream(chunks: Iterable[bytes]) -> BinaryIO:
    """A buffered, read-only binary file over an iterator of byte chunks.

    Lets :func:`strip_leading_dir` read straight from ``Response.iter_content`` (which
    also raises ``requests`` exceptions, not urllib3 ones, if the body breaks off).
    """
    return io.BufferedReader(_ChunkReader(chunks))


class _ChunkReader(io.RawIOBase):

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
