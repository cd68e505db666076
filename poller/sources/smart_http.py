"""Read a remote's refs over git's smart HTTP protocol in one request.

``GET <url>/info/refs?service=git-upload-pack`` returns the ref advertisement (protocol v0:
every ref, plus peeled ``^{}`` entries for annotated tags). This is what ``git ls-remote``
does for an http(s) remote, without a subprocess per poll, through a counted, keep-alive
``requests`` session; credentials in the URL become basic auth and never reach a log line.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from poller.errors import ResponseTooLarge, SourceError
from poller.http import request
from poller.sources.base import MAX_REFS


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url, None
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    from urllib.parse import unquote

    return urlunsplit(parts._replace(netloc=netloc)), (unquote(parts.username or ""),
                                                       unquote(parts.password or ""))


def parse_pkt_lines(data: bytes, *, limit: int | None = None) -> list[bytes]:
    """Split a pkt-line stream; flush packets (0000) are dropped. More than ``limit`` lines
    raise :class:`ResponseTooLarge`."""
    out: list[Any] = []
    i = 0
    while i + 4 <= len(data):
        if limit is not None and len(out) > limit:
            raise ResponseTooLarge(f"ref advertisement has more than {limit} refs")
        try:
            n = int(data[i:i + 4], 16)
        except ValueError as exc:
            raise SourceError("malformed pkt-line in ref advertisement") from exc
        if n == 0:
            i += 4
            continue
        if n < 4 or i + n > len(data):
            raise SourceError("truncated pkt-line in ref advertisement")
        out.append(data[i + 4:i + n])
        i += n
    return out


def advertised_refs(session: requests.Session, url: str, *, upstream: str) -> str:
    """The remote's refs in ``git ls-remote`` output format (``<sha>\\t<ref>`` lines)."""
    clean, auth = split_credentials(url.rstrip("/"))
    resp = request(session, "GET", f"{clean}/info/refs", upstream=upstream,
                   params={"service": "git-upload-pack"}, auth=auth,
                   headers={"Git-Protocol": "version=0", "Accept": "*/*"})
    ctype = resp.headers.get("Content-Type", "")
    if ctype != "application/x-git-upload-pack-advertisement":
        raise SourceError(f"{upstream}: not a smart-HTTP git remote (Content-Type {ctype or 'missing'})")
    try:
        # Every ref, its peeled ^{} line, the service line and the capabilities.
        lines = parse_pkt_lines(resp.content, limit=2 * MAX_REFS + 2)
    except ResponseTooLarge as exc:
        raise ResponseTooLarge(f"{upstream}: {exc}", upstream=upstream) from None
    except SourceError as exc:
        raise SourceError(f"{upstream}: {exc}") from None
    refs = []
    for raw in lines:
        line = raw.rstrip(b"\n")
        if line.startswith(b"# service="):
            continue
        line = line.split(b"\0", 1)[0]  # capabilities ride on the first ref
        sha, _, ref = line.partition(b" ")
        if ref and ref != b"capabilities^{}":
            # A ref name that is not UTF-8 can be neither the watched branch nor a version:
            # parse_ls_remote drops it (and any malformed line) instead of failing the poll.
            refs.append(f"{sha.decode('ascii', 'replace')}\t{ref.decode('utf-8', 'replace')}")
    return "\n".join(refs)
