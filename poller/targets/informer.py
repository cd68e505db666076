"""A list+watch cache of one kind of Kubernetes object in one namespace, the way controllers
read: one ``LIST``, then one long ``WATCH`` from its resourceVersion that keeps the cache
current. A broken watch (connection error, server-side timeout) is resumed from the last
resourceVersion seen; ``410 Gone`` (the version is too old for the API server's watch cache)
or an ``ERROR`` event makes it list again. Reads never touch the API server, so an unchanged
update cycle costs zero requests; writes stay direct (see :mod:`poller.targets.kubernetes`).

Objects are the API server's JSON (camelCase dicts). One :class:`InformerSet` per API client
shares the informers between all targets on the same cluster.
"""

from __future__ import annotations

import atexit
import json
import random
import socket
import threading
import weakref
from collections.abc import Callable

from poller.errors import UpstreamError
from poller.logs import get_logger

log = get_logger(__name__)

GSS = ("game.kruise.io", "v1alpha1", "gameserversets")
KINDS = ("Deployment", "StatefulSet", "DaemonSet", "GameServerSet", "Pod")


class WatchGone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class Informer:
    def __init__(self, api, kind: str, namespace: str, *, watch_timeout: tuple[int, int] = (300, 600),
                 sync_timeout: float = 30.0):
        if kind not in KINDS:
            raise ValueError(f"informer: unknown kind {kind!r}")
        from kubernetes import client

        self.api, self.kind, self.namespace = api, kind, namespace
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.watch_timeout = watch_timeout
        self.sync_timeout = sync_timeout
        self._objects: dict[str, dict] = {}
        self._rv: str | None = None
        self._lock = threading.Condition()
        self._synced = False
        self._error: str | None = None
        self._stop = threading.Event()
        self._resp = None
        #: how many LISTs and WATCHes this informer made (for tests and the benchmark)
        self.lists = 0
        self.watches = 0
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind}-{namespace}", daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    # -- reading ------------------------------------------------------------------------------
    def wait_synced(self) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: self._synced or self._stop.is_set(), self.sync_timeout):
                raise UpstreamError(f"kubernetes: list {self.kind} in {self.namespace}: not synced after "
                                    f"{self.sync_timeout:.0f}s ({self._error or 'no answer'})",
                                    upstream="kubernetes")

    def get(self, name: str) -> dict | None:
        self.wait_synced()
        with self._lock:
            return self._objects.get(name)

    def list(self, selector: dict[str, str] | None = None) -> list[dict]:
        self.wait_synced()
        with self._lock:
            objs = list(self._objects.values())
        if selector:
            objs = [o for o in objs if all((o["metadata"].get("labels") or {}).get(k) == v
                                           for k, v in selector.items())]
        return sorted(objs, key=lambda o: o["metadata"]["name"])

    def observe(self, obj: dict) -> None:
        """Feed a fresher object (the answer to a direct write or read) into the cache."""
        name = obj["metadata"]["name"]
        with self._lock:
            old = self._objects.get(name)
            if old is None or _rv(old) <= _rv(obj):
                self._objects[name] = obj
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until the cache changes so that ``predicate()`` holds (or ``timeout``)."""
        with self._lock:
            return self._lock.wait_for(predicate, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch and wait (up to ``timeout`` seconds) for its thread to finish."""
        self._interrupt()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _interrupt(self) -> None:
        self._stop.set()
        _RUNNING.discard(self)
        resp = self._resp
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:   # wake the blocked read of the watch (close() would wait for it)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._lock.notify_all()

    # -- the loop -------------------------------------------------------------------------------
    def _list_call(self, **kw):
        ns = self.namespace
        if self.kind == "GameServerSet":
            return self.custom.list_namespaced_custom_object(*GSS[:2], ns, GSS[2], _preload_content=False, **kw)
        fn = {"Deployment": self.apps.list_namespaced_deployment,
              "StatefulSet": self.apps.list_namespaced_stateful_set,
              "DaemonSet": self.apps.list_namespaced_daemon_set,
              "Pod": self.core.list_namespaced_pod}[self.kind]
        return fn(ns, _preload_content=False, **kw)

    def _relist(self) -> None:
        resp = self._list_call()
        self.lists += 1
        body = json.loads(resp.data)
        objects = {o["metadata"]["name"]: o for o in body.get("items") or []}
        with self._lock:
            self._objects = objects
            self._rv = body["metadata"].get("resourceVersion")
            self._synced = True
            self._error = None
            self._lock.notify_all()
        log.debug("informer.listed", kind=self.kind, namespace=self.namespace, objects=len(objects),
                  resource_version=self._rv)

    def _watch(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        timeout = random.randint(*self.watch_timeout)
        resp = self._list_call(watch=True, resource_version=self._rv, allow_watch_bookmarks=True,
                               timeout_seconds=timeout, _request_timeout=(10, timeout + 30))
        self.watches += 1
        self._resp = resp   # first: stop() cuts the watch it sees here, or we see it stopped below
        try:
            if self._stop.is_set():
                return
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchGone(obj.get("message") or "410 Gone")
                    raise UpstreamError(f"kubernetes: watch {self.kind}: {obj.get('message')}",
                                        upstream="kubernetes", status=obj.get("code"))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                with self._lock:
                    if kind in ("ADDED", "MODIFIED"):
                        self._objects[obj["metadata"]["name"]] = obj
                    elif kind == "DELETED":
                        self._objects.pop(obj["metadata"]["name"], None)
                    if rv:
                        self._rv = rv
                    self._lock.notify_all()
        finally:
            self._resp = None
            resp.release_conn()

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        delay = 0.5
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                self._watch()        # returns when the server ends the watch: resume from _rv
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - connection reset, timeout: resume the watch, list if that fails
                if self._stop.is_set():   # stopped (its watch cut on purpose): end without a word
                    return
                if isinstance(exc, WatchGone):
                    log.info("informer.gone", kind=self.kind, namespace=self.namespace, error=str(exc))
                    need_list = True
                    continue
                if isinstance(exc, ApiException):
                    need_list = True
                    self._error = f"{exc.status} {exc.reason}"
                    if exc.status == 410:
                        continue
                    log.warning("informer.failed", kind=self.kind, namespace=self.namespace, error=self._error)
                else:
                    self._error = f"{type(exc).__name__}: {exc}"
                    log.info("informer.watch_broken", kind=self.kind, namespace=self.namespace, error=self._error)
                    need_list = need_list or isinstance(exc, UpstreamError)
                self._stop.wait(delay)
                delay = min(30.0, delay * 2)


#: Every informer not yet stopped: stopped when the interpreter exits, so no watch thread is still
#: reading or logging while the interpreter tears down its streams.
_RUNNING: weakref.WeakSet[Informer] = weakref.WeakSet()


def stop_all(informers: list[Informer], timeout: float = 5.0) -> None:
    """Stop ``informers``: cut every watch at once, then wait for their threads."""
    for informer in informers:
        informer._interrupt()
    for informer in informers:
        informer.join(timeout)


@atexit.register
def _stop_running() -> None:
    stop_all(list(_RUNNING))


def _rv(obj: dict) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class InformerSet:
    """One informer per (kind, namespace) on one cluster, started on first use."""

    def __init__(self, api, **kw):
        self.api = api
        self.kw = kw
        self._informers: dict[tuple[str, str], Informer] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, namespace: str) -> Informer:
        with self._lock:
            key = (kind, namespace)
            if key not in self._informers:
                self._informers[key] = Informer(self.api, kind, namespace, **self.kw)
            return self._informers[key]

    def all(self) -> list[Informer]:
        with self._lock:
            return list(self._informers.values())

    def stop(self) -> None:
        stop_all(self.all())


