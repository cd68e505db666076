"""Wire-level stand-ins for the chart pipeline's upstreams (real HTTP on 127.0.0.1).

* :class:`IndexServer`: a static Helm repository: ``/index.yaml`` with a strong ETag and
  Last-Modified, honouring If-None-Match / If-Modified-Since; counts 200s and 304s.
* :class:`RecordingHelmApi`: answers ``POST /apply`` like the helm API and records every
  call; can be told to fail.
* :class:`ChartMuseumProcess`: the ChartMuseum stand-in (``toolchain/chartmuseum_compat.py``)
  run as a process with ``python``: no toolchain build needed, same script the cluster lane
  installs as ``chartmuseum``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import yaml

from tests.fixtures.services import free_port, wait_until

STANDIN = Path(__file__).resolve().parents[2] / "toolchain" / "chartmuseum_compat.py"


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _IndexHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv: IndexServer = self.server.owner
        if self.path.split("?")[0] != "/index.yaml":
            self.send_error(404)
            return
        with srv.lock:
            body, etag, modified = srv.body, srv.etag, srv.modified
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        fresh = (inm == etag) if inm else False
        if not inm and ims:
            try:
                fresh = email.utils.parsedate_to_datetime(ims).timestamp() >= int(modified)
            except (TypeError, ValueError):
                fresh = False
        with srv.lock:
            srv.statuses.append(304 if fresh else 200)
        if fresh:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-yaml")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(modified, usegmt=True))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class IndexServer(_Server):
    def __init__(self):
        self.statuses: list[int] = []
        self.entries: dict[str, list[dict]] = {}
        self.body = b""
        self.etag = ""
        self.modified = time.time()
        super().__init__(_IndexHandler)
        self._render()

    def _render(self) -> None:
        doc = {"apiVersion": "v1", "entries": self.entries, "generated": "2026-11-22T00:00:00Z"}
        body = yaml.safe_dump(doc).encode()
        self.body, self.etag = body, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        self.modified = time.time()

    def add(self, chart: str, *versions: str) -> None:
        with self.lock:
            for v in versions:
                self.entries.setdefault(chart, []).append(
                    {"name": chart, "version": v, "apiVersion": "v2",
                     "urls": [f"charts/{chart}-{v}.tgz"], "digest": hashlib.sha256(v.encode()).hexdigest()})
            self._render()


class _ApiHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        srv: RecordingHelmApi = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with srv.lock:
            srv.calls.append({"path": self.path, "auth": self.headers.get("Authorization"),
                              "body": json.loads(raw or b"{}")})
            n = len(srv.calls)
            status = srv.fail_with
        if status:
            payload = {"error": "cluster_unavailable", "message": "down"}
        else:
            status = 202
            env = json.loads(raw or b"{}").get("environment", "?")
            payload = {"job": f"helmsman-cronjob-{env}-{n}", "environment": env, "created": True,
                       "follow_up_queued": False, "status_url": f"/jobs/x-{n}"}
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RecordingHelmApi(_Server):
    def __init__(self):
        self.calls: list[dict] = []
        self.fail_with: int | None = None
        super().__init__(_ApiHandler)


class ChartMuseumProcess:
    """``python toolchain/chartmuseum_compat.py`` on a free port with local storage."""

    def __init__(self, storage: Path):
        self.storage = Path(storage)
        self.port = free_port()
        self.log = self.storage.parent / f"chartmuseum-{self.port}.log"
        with open(self.log, "wb") as fh:
            self.popen = subprocess.Popen(
                [sys.executable, str(STANDIN), f"--port={self.port}", "--listen-host=127.0.0.1",
                 "--storage=local", f"--storage-local-rootdir={self.storage}"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: requests.get(self.url + "/health", timeout=2).status_code == 200, 30,
                   what="the ChartMuseum stand-in to answer /health")

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
