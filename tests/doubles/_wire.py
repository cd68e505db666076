"""What every hosted-API test double shares: a threaded werkzeug server on 127.0.0.1,
request counting, fault injection (status + Retry-After, optionally for matching paths only),
and start/stop. Each double adds its own routes and response shapes."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable
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
        self._answers: list[tuple[str | None, str, Callable[[], Response]]] = []
        self._lock = threading.RLock()
        self._server = make_server(host, 0, self._answering(app), threaded=True,
                                   request_handler=QuietHandler)
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

    def answer(self, path: str, body: bytes | Callable[[], Iterable[bytes]], *, status: int = 200,
               content_type: str = "application/json", method: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        """From now on answer requests whose raw path matches ``path`` (a regular expression;
        with ``method``, only that method) with ``body``, whatever the route would say: the
        wire of a broken or hostile upstream. A callable body is called per request and its
        chunks streamed (an endless generator makes an endless body)."""
        def respond() -> Response:
            data = body if isinstance(body, bytes) else iter(body())
            return Response(data, status=status, content_type=content_type, headers=headers)

        with self._lock:
            self._answers.append((method, path, respond))

    def _answering(self, app: Callable) -> Callable:
        def wsgi(environ: dict, start_response: Callable) -> Any:
            path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
            path = path.split("?", 1)[0]
            method = environ.get("REQUEST_METHOD", "")
            with self._lock:
                respond = next((r for m, p, r in self._answers
                                if m in (None, method) and re.search(p, path)), None)
                if respond is not None:
                    self.requests.append((environ.get("REQUEST_METHOD", ""), path))
            if respond is None:
                return app(environ, start_response)
            return respond()(environ, start_response)
        return wsgi

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
