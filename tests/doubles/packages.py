"""A package repository double (Maven Central / a plugin mirror) for build tests and the
build benchmark: ``GET /packages/<name>`` answers a deterministic blob, every request is
counted, and a request can be held open until the test releases it (a slow download, so a
build is certainly mid-step)."""

from __future__ import annotations

import hashlib
import threading

from werkzeug.wrappers import Response

from tests.doubles._wire import Abort, WireDouble


def package_bytes(name: str, size: int) -> bytes:
    """Deterministic and incompressible, like a real jar: SHA-256 in counter mode."""
    out = bytearray()
    seed = name.encode()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:size])


class PackageRepo(WireDouble):
    def __init__(self, host: str = "127.0.0.1", size: int = 64 * 1024):
        self.size = size
        self._held: dict[str, threading.Event] = {}
        self.arrived = threading.Event()
        self._serve(host, "package-repo", self._app)

    def hold(self, name: str) -> threading.Event:
        """Requests for ``name`` wait until the returned event is set (or 120s)."""
        ev = threading.Event()
        self._held[name] = ev
        return ev

    def fetches(self, prefix: str = "/packages/") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == "GET" and p.startswith(prefix))

    def _app(self, environ, start_response):
        try:
            _request, raw_path, fault = self._accept(environ)
            if fault is not None:
                raise Abort(Response("fault", status=fault.status))
            if not raw_path.startswith("/packages/"):
                raise Abort(Response("not found", status=404))
            name = raw_path[len("/packages/"):]
            held = self._held.get(name)
            if held is not None:
                self.arrived.set()
                held.wait(120)
            response = Response(package_bytes(name, self.size), mimetype="application/java-archive")
        except Abort as exc:
            response = exc.response
        return response(environ, start_response)
