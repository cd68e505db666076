"""Broken and hostile upstreams on the wire, for the hostile-upstream suite.

* :class:`WireServer`: an HTTP server that knows no route; tests give it answers with
  :meth:`~tests.doubles._wire.WireDouble.answer` (a git smart-HTTP ref advertisement of
  200,000 refs, an endless body, garbage).
* :class:`RegistryFront`: a small front before a real ``docker-registry``. It passes every
  request through, except those a test gave an answer for (a manifest that never ends, a
  tag list of the wrong JSON type).
* Helpers that make the bodies: :func:`pkt_line`, :func:`advertisement`, :func:`endless`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import requests
from werkzeug.wrappers import Request, Response

from tests.doubles._wire import WireDouble

ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def advertisement(refs: Iterator[tuple[str, bytes]]) -> Iterator[bytes]:
    """A protocol-v0 ref advertisement of ``(sha, refname)`` pairs, streamed."""
    yield pkt_line(b"# service=git-upload-pack\n") + b"0000"
    first = True
    for sha, ref in refs:
        caps = b"\0multi_ack side-band-64k ofs-delta" if first else b""
        first = False
        yield pkt_line(sha.encode() + b" " + ref + caps + b"\n")
    yield b"0000"


def endless(head: bytes, chunk: bytes) -> Iterator[bytes]:
    """``head`` then ``chunk`` for ever: a body that never ends."""
    yield head
    yield from itertools.repeat(chunk * max(1, 65536 // len(chunk)))


class WireServer(WireDouble):
    """Answers 404 to everything it was not told to answer."""

    def __init__(self, host: str = "127.0.0.1"):
        self._serve(host, "wire-server", Response("not found\n", status=404))


class RegistryFront(WireDouble):
    """Passes requests through to the registry at ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, host: str = "127.0.0.1"):
        self.upstream = upstream.rstrip("/")
        self._session = requests.Session()
        self._serve(host, "registry-front", self._proxy)

    @property
    def addr(self) -> str:
        return self.url.split("://", 1)[1]

    def _proxy(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        query = environ.get("QUERY_STRING")
        url = self.upstream + request.path + (f"?{query}" if query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        resp = self._session.request(request.method, url, headers=headers, data=request.get_data(),
                                     allow_redirects=False, timeout=30)
        out = Response(resp.content, status=resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in _HOP_BY_HOP:
                out.headers[k] = v
        if request.method == "HEAD" and "Content-Length" in resp.headers:
            out.headers["Content-Length"] = resp.headers["Content-Length"]
        return out(environ, start_response)
