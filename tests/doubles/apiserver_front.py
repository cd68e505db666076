"""A plain-HTTP front for the real kube-apiserver, for fault injection at the wire: every
request is forwarded (with the cluster's token, TLS verified against its CA) and streamed
back, so watches work. Faults: :meth:`break_watches` ends every open watch stream (the
client sees the server end the watch, as at its timeout); :meth:`before` runs a hook
before forwarding the first request matching a method and path (someone else's write
landing between a client's read and its write); :meth:`hold_watches` keeps new watch
requests waiting (a client cut off for a while) and :meth:`release_watches` lets them go,
answering those that resume from a resourceVersion older than a given one ``410 Gone``, the
two ways kube-apiserver does when that version left its history: a ``200`` stream whose one
event is ``{"type": "ERROR", "object": <Status 410 Expired>}``, or the ``410`` status with the
Status as body."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import requests
import yaml
from werkzeug.wrappers import Request, Response

from tests.doubles._wire import WireDouble

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class ApiServerFront(WireDouble):
    def __init__(self, kubeconfig: str):
        with open(kubeconfig) as f:
            kc = yaml.safe_load(f)
        cluster = kc["clusters"][0]["cluster"]
        user = kc["users"][0]["user"]
        self.upstream = cluster["server"].rstrip("/")
        self.session = requests.Session()
        self.verify = cluster.get("certificate-authority") or True
        self.session.headers["Authorization"] = f"Bearer {user['token']}"
        self._open: set = set()
        self._hooks: list[tuple[str, str, Callable[[], None]]] = []
        self.watches_opened = 0
        self.watches_held = 0
        self.watches_expired = 0
        #: every request as (method, raw path with its query)
        self.calls: list[tuple[str, str]] = []
        self._released = threading.Event()
        self._released.set()
        self._expire_before = 0
        self._expire_as = "event"
        self._serve("127.0.0.1", "apiserver-front", self._app)

    def lists(self, resource: str) -> int:
        """How many LISTs (collection GETs that are not watches) of ``resource`` went through."""
        return sum(1 for method, raw in self.calls if method == "GET" and "watch=" not in raw.lower()
                   and urlsplit(raw).path.rstrip("/").endswith(f"/{resource}"))

    def hold_watches(self) -> None:
        """From now on a new watch request waits at the front until :meth:`release_watches`."""
        self._released.clear()

    def release_watches(self, *, expire_before: int, as_: str = "event") -> None:
        """Let held and later watches go; one resuming from a resourceVersion below
        ``expire_before`` is answered 410 (``as_``: ``"event"``, a 200 stream with an ERROR
        event, the watch cache's way; ``"status"``, HTTP 410 with a Status body)."""
        if as_ not in ("event", "status"):
            raise ValueError(f"release_watches: as_ must be 'event' or 'status', not {as_!r}")
        with self._lock:
            self._expire_before, self._expire_as = expire_before, as_
        self._released.set()

    def _expired(self, raw: str) -> Response | None:
        """The 410 kube-apiserver gives a watch from a resourceVersion it no longer has."""
        with self._lock:
            before, as_ = self._expire_before, self._expire_as
        rv = (parse_qs(urlsplit(raw).query).get("resourceVersion") or [""])[0]
        if not rv.isdigit() or int(rv) >= before:
            return None
        with self._lock:
            self.watches_expired += 1
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": f"too old resource version: {rv} ({before})", "reason": "Expired", "code": 410}
        if as_ == "status":
            return Response(json.dumps(status), status=410, content_type="application/json")
        return Response(json.dumps({"type": "ERROR", "object": status}) + "\n", status=200,
                        content_type="application/json")

    def kubeconfig(self, path: str) -> str:
        """Write a kubeconfig that talks to the cluster through this front."""
        data = {"apiVersion": "v1", "kind": "Config", "current-context": "front",
                "clusters": [{"name": "front", "cluster": {"server": self.url}}],
                "users": [{"name": "front", "user": {"token": "via-front"}}],
                "contexts": [{"name": "front", "context": {"cluster": "front", "user": "front"}}]}
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        return path

    def break_watches(self) -> None:
        """End every open watch stream now (the socket to the API server is shut)."""
        with self._lock:
            open_ = list(self._open)
        for up in open_:
            sock = getattr(getattr(up.raw, "_connection", None) or getattr(up.raw, "connection", None),
                           "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            else:
                up.close()

    def before(self, method: str, path: str, hook: Callable[[], None]) -> None:
        with self._lock:
            self._hooks.append((method, path, hook))

    def _app(self, environ, start_response):
        request = Request(environ)
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
        with self._lock:
            self.requests.append((request.method, raw.split("?", 1)[0]))
            self.calls.append((request.method, raw))
            hook = next((h for h in self._hooks if h[0] == request.method and re.search(h[1], raw)), None)
            if hook is not None:
                self._hooks.remove(hook)
        if hook is not None:
            hook[2]()
        watch = "watch=true" in raw.lower()
        if watch and not self._released.is_set():
            with self._lock:
                self.watches_held += 1
            self._released.wait(120)
        if watch:
            expired = self._expired(raw)
            if expired is not None:
                return expired(environ, start_response)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "authorization")
                   and k.lower() not in _HOP}
        up = self.session.request(request.method, self.upstream + raw, headers=headers,
                                  data=request.get_data(), stream=True, timeout=(10, 900),
                                  verify=self.verify)   # per request: the environment must not override it
        out_headers = [(k, v) for k, v in up.headers.items() if k.lower() not in _HOP]
        if not watch:
            return Response(up.content, status=up.status_code, headers=out_headers)(environ, start_response)
        with self._lock:
            self.watches_opened += 1
            self._open.add(up)

        def stream():
            try:
                for chunk in up.iter_content(None):
                    yield chunk
            except Exception:   # broken by break_watches: the stream just ends
                return
            finally:
                with self._lock:
                    self._open.discard(up)
                up.close()
        return Response(stream(), status=up.status_code, headers=out_headers)(environ, start_response)
