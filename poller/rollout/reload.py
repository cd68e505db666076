"""Tell a game server's main process to reload after its hot-update files changed.

* HTTP: call ``method http://<server ip>:<port><path>`` until it answers 2xx, at most
  ``attempts`` times with doubling back-off (bounded); connection errors count as tries.
* exec: run a command in the server's container (Kubernetes exec or ``docker exec``).

The reload command must be idempotent: it may run again after a restart of Slipway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import requests

from poller.http import make_session
from poller.settings.updates import ExecReload, HttpReload


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    attempts: int
    detail: str


class Reloader(Protocol):
    def reload(self, server: str, address: str | None) -> ReloadResult: ...


class HttpReloader:
    def __init__(self, cfg: HttpReload, *, wait: Callable[[float], None] | None = None):
        self.cfg = cfg
        self.session = make_session("reload", timeout=(cfg.timeout, cfg.timeout))
        self._wait = wait or (lambda s: threading.Event().wait(s))

    def reload(self, server: str, address: str | None) -> ReloadResult:
        if not address:
            return ReloadResult(False, 0, f"{server} has no IP address")
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{self.cfg.port}{self.cfg.path.replace('{server}', server)}"
        delay, detail = self.cfg.backoff, ""
        for attempt in range(1, self.cfg.attempts + 1):
            try:
                resp = self.session.request(self.cfg.method, url)
                if 200 <= resp.status_code < 300:
                    return ReloadResult(True, attempt, f"{self.cfg.method} {url} -> {resp.status_code}")
                detail = f"{self.cfg.method} {url} -> {resp.status_code}"
            except requests.RequestException as exc:
                detail = f"{self.cfg.method} {url} failed: {type(exc).__name__}"
            if attempt < self.cfg.attempts:
                self._wait(delay)
                delay = min(10.0, delay * 2 if delay else 0)
        return ReloadResult(False, self.cfg.attempts, detail)


class KubernetesExecReloader:
    def __init__(self, api, cfg: ExecReload, *, namespace: str, container: str):
        self.api, self.cfg, self.namespace = api, cfg, namespace
        self.container = cfg.container or container

    def reload(self, server: str, address: str | None) -> ReloadResult:
        from kubernetes import client
        from kubernetes.stream import stream

        core = client.CoreV1Api(self.api)
        try:
            ws = stream(core.connect_get_namespaced_pod_exec, server, self.namespace,
                        command=self.cfg.command, container=self.container, stderr=True, stdin=False,
                        stdout=True, tty=False, _preload_content=False)
            ws.run_forever(timeout=self.cfg.timeout)
            code = ws.returncode
            out = (ws.read_stdout() or "") + (ws.read_stderr() or "")
            ws.close()
        except Exception as exc:  # noqa: BLE001 - a boundary: logged, never raised further
            return ReloadResult(False, 1, f"exec in {server}/{self.container} failed: {exc}")
        return ReloadResult(code == 0, 1, f"exit {code}: {out.strip()[-300:]}")


class DockerExecReloader:
    def __init__(self, client_factory: Callable, cfg: ExecReload):
        self.client_factory, self.cfg = client_factory, cfg

    def reload(self, server: str, address: str | None) -> ReloadResult:
        try:
            container = self.client_factory().containers.get(server)
            code, out = container.exec_run(self.cfg.command)
        except Exception as exc:  # noqa: BLE001 - a boundary: logged, never raised further
            return ReloadResult(False, 1, f"docker exec in {server} failed: {exc}")
        text = (out or b"").decode(errors="replace").strip()[-300:]
        return ReloadResult(code == 0, 1, f"exit {code}: {text}")
