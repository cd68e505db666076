"""Turn a repository archive into a Docker build context.

The archive holds the whole tree at one commit. The context is the ``context`` directory
of it, with paths relative to that directory; a Dockerfile that lies outside the context
is added under :data:`OUTSIDE_DOCKERFILE`, so ``dockerfile: docker/Dockerfile`` with
``context: app`` works like ``docker build -f docker/Dockerfile app`` does.
"""

from __future__ import annotations

import posixpath
import tarfile
from typing import BinaryIO

from poller.errors import BuildError

OUTSIDE_DOCKERFILE = ".slipway.Dockerfile"


def _norm(path: str) -> str:
    p = posixpath.normpath(path.strip("/")) if path not in ("", ".") else ""
    return "" if p == "." else p


def make_context(archive: BinaryIO, out: BinaryIO, *, context: str = ".",
                 dockerfile: str = "Dockerfile") -> str:
    """Write the context tar to ``out``; return the Dockerfile path to give the engine."""
    ctx = _norm(context)
    df = _norm(dockerfile)
    prefix = ctx + "/" if ctx else ""
    found_df: bytes | None = None
    found_ctx = not ctx
    df_in_context = df.startswith(prefix)
    with tarfile.open(fileobj=archive, mode="r|*") as src, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            name = _norm(member.name)
            if name == "pax_global_header" or member.type == tarfile.XGLTYPE:
                continue
            if name == df and member.isfile():
                data = src.extractfile(member)
                found_df = data.read() if data else b""
                if df_in_context:
                    import io

                    member.name = name[len(prefix):]
                    dst.addfile(member, io.BytesIO(found_df))
                    continue
            if ctx and not (name == ctx or name.startswith(prefix)):
                continue
            if ctx and name == ctx:
                found_ctx = True
                continue
            found_ctx = True
            member.name = name[len(prefix):]
            if member.isfile():
                dst.addfile(member, src.extractfile(member))
            else:
                dst.addfile(member)
        if not found_ctx:
            raise BuildError(f"context directory '{context}' is not in the repository")
        if found_df is None:
            raise BuildError(f"Dockerfile '{dockerfile}' is not in the repository")
        if not df_in_context:
            import io

            info = tarfile.TarInfo(OUTSIDE_DOCKERFILE)
            info.size = len(found_df)
            info.mode = 0o644
            dst.addfile(info, io.BytesIO(found_df))
            return OUTSIDE_DOCKERFILE
    return df[len(prefix):]
