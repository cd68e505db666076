"""What every hosted-API test double shares: a threaded werkzeug server on 127.0.0.1,
request counting, fault injection (status + Retry-After, optionally for matching paths only),
and start/stop. Each double adds its own routes and response shapes."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # keep test output readable
        pass


@dataclass(frozen=True)
class Fault:
    status: int
    retry_after: float | None
    path: str | None

    def matches(self, raw_path: str) -> bool:
        return self.path is None or re.search(self.path, raw_path) is not None


class Abort(Exception):
    """Raised by a route to answer with ``response`` at once."""

    def __init__(self, response: Response):
        self.response = response


class WireDouble:
    """Base of the doubles: call :meth:`_serve` at the end of ``__init__``."""

    def _serve(self, host: str, name: str, app: Callable) -> None:
        self.requests: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._server = make_server(host, 0, app, threaded=True, request_handler=QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=name, daemon=True)
        self._thread.start()

    def fail_next(self, count: int = 1, status: int = 503, retry_after: float | None = None,
                  *, path: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After``).

        With ``path`` (a regular expression searched in the raw request path) only matching
        requests fail; others are served normally.
        """
        with self._lock:
            self._faults.extend([Fault(status, retry_after, path)] * count)

    def request_count(self) -> int:
        return len(self.requests)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, environ: dict) -> tuple[Request, str, Fault | None]:
        """Count the request and take the first fault that applies to it, if any."""
        request = Request(environ)
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(request.path)
        raw_path = raw_path.split("?", 1)[0]
        environ["double.raw_path"] = raw_path
        with self._lock:
            self.requests.append((request.method, raw_path))
            fault = next((f for f in self._faults if f.matches(raw_path)), None)
            if fault is not None:
                self._faults.remove(fault)
        return request, raw_path, fault
