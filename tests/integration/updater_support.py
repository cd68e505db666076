"""Shared helpers for the updater tests (no tests here): runnable images pushed to the real
registry, cheap extra tags through the registry's HTTP API, and real HTTP servers (a reload
endpoint, a registry front that fails on demand)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from poller.config import parse_config
from poller.store import Store

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LOCAL_IMAGE = "slipway-test/updater-busybox:1"
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sleep", "3600"]
"""


def build_local_image(docker_client, tmp: Path) -> str:
    """A runnable image without pulling anything: busybox-static in an empty image."""
    try:
        docker_client.images.get(LOCAL_IMAGE)
        return LOCAL_IMAGE
    except Exception:
        pass
    ctx = tmp / "busybox-image"
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", ctx / "busybox")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    docker_client.images.build(path=str(ctx), tag=LOCAL_IMAGE, rm=True)
    return LOCAL_IMAGE


def push_base(docker_client, registry, repo: str, tag: str) -> str:
    """Push the local image as ``repo:tag`` to the test registry; returns the digest."""
    image = docker_client.images.get(LOCAL_IMAGE)
    image.tag(f"{registry.addr}/{repo}", tag)
    for line in docker_client.api.push(f"{registry.addr}/{repo}", tag=tag, stream=True, decode=True):
        if "error" in line:
            raise AssertionError(line["error"])
    return registry.digest(repo, tag)


def _put_blob(url: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=10)
    r.raise_for_status()
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else url + loc
    sep = "&" if "?" in loc else "?"
    requests.put(f"{loc}{sep}digest={digest}", data=data, timeout=10,
                 headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    return digest


def retag(registry, repo: str, source_tag: str, tag: str, *, label: str | None = None) -> str:
    """Put ``repo:source_tag`` under ``tag`` with the HTTP API. With ``label`` the image config
    gets a label of that value, so the new tag has its own digest (a real new build would)."""
    url = registry.url
    m = requests.get(f"{url}/v2/{repo}/manifests/{source_tag}", headers={"Accept": MANIFEST}, timeout=10)
    m.raise_for_status()
    manifest = m.json()
    if label is not None:
        cfg = requests.get(f"{url}/v2/{repo}/blobs/{manifest['config']['digest']}", timeout=10).json()
        cfg.setdefault("config", {}).setdefault("Labels", {})
        cfg["config"]["Labels"] = {**(cfg["config"]["Labels"] or {}), "slipway.test/build": label}
        data = json.dumps(cfg).encode()
        manifest["config"] = {**manifest["config"], "digest": _put_blob(url, repo, data), "size": len(data)}
    body = json.dumps(manifest).encode()
    r = requests.put(f"{url}/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": MANIFEST},
                     timeout=10)
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def engine_for(data: dict, store_path: Path, **kw):
    """An update engine on a runtime's bus, ``notify:`` subscribed as in ``poller run``; ``kw``
    tune the engine (clock, counter, page size...)."""
    from poller.runtime import Runtime
    from poller.updater.build import build_engine

    cfg = parse_config(data, file="test.yaml", env={})
    runtime = Runtime(cfg, store=Store(store_path))
    runtime.notifications  # noqa: B018 - subscribed before the engine publishes
    return build_engine(cfg, runtime.store, bus=runtime.bus, **kw), cfg


class _Recorder(BaseHTTPRequestHandler):
    def _handle(self):
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with srv.lock:
            srv.calls.append((self.command, self.path))
            srv.bodies.append(json.loads(body) if body.startswith(b"{") else body)
            status = srv.statuses.pop(0) if srv.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, *args):
        pass


def reload_server(statuses: list[int] | None = None) -> ThreadingHTTPServer:
    """A real HTTP server on 127.0.0.1 that records calls and answers ``statuses`` in order, then 200."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.calls, srv.bodies, srv.statuses, srv.lock = [], [], list(statuses or []), threading.Lock()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class _Front(BaseHTTPRequestHandler):
    """Forwards to the registry, or answers 500 (with Retry-After) while ``failing`` is set."""

    protocol_version = "HTTP/1.1"

    def _handle(self):
        srv = self.server
        with srv.lock:
            srv.seen.append((self.command, self.path))
            failing = srv.failing
        if failing:
            srv.failed += 1
            self.send_response(500)
            self.send_header("Retry-After", str(srv.retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.paginate and self.command == "GET" and "/tags/list" in self.path:
            return self._tags_page()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        resp = requests.request(self.command, srv.upstream + self.path, headers=headers, data=body,
                                allow_redirects=False, timeout=30)
        self.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() in ("content-type", "docker-content-digest", "link", "www-authenticate",
                             "docker-upload-uuid", "range", "docker-distribution-api-version"):
                self.send_header(k, v)
            if k.lower() == "location":
                self.send_header(k, v.replace(srv.upstream, f"http://{srv.addr}"))
        payload = b"" if self.command == "HEAD" else resp.content
        self.send_header("Content-Length", resp.headers.get("Content-Length", "0")
                         if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _tags_page(self):
        """Tag listing the way paginating registries (Hub, GHCR, distribution 3) do it: ``n``
        and ``last`` in, a ``Link: <...>; rel="next"`` header out. Debian's docker-registry 2.8
        ignores ``n``, so this front adds what it lacks, over its real tag list."""
        srv = self.server
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        tags = sorted(requests.get(srv.upstream + path, timeout=30).json().get("tags") or [])
        n = int(params.get("n", 100))
        if "last" in params:
            tags = [t for t in tags if t > params["last"]]
        page = tags[:n]
        body = json.dumps({"name": path.split("/v2/", 1)[1].rsplit("/tags", 1)[0], "tags": page}).encode()
        with srv.lock:
            srv.pages += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if len(tags) > n:
            self.send_header("Link", f'<{path}?n={n}&last={page[-1]}>; rel="next"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args):
        pass


def failing_front(registry, retry_after: int = 30, paginate: bool = False) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Front)
    srv.paginate, srv.pages = paginate, 0
    srv.upstream, srv.failing, srv.failed, srv.retry_after = registry.url, False, 0, retry_after
    srv.seen, srv.lock = [], threading.Lock()
    srv.addr = f"127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def seed_tag(registry, repo: str, tag: str, *, build: str | None = None) -> str:
    """A minimal image (config blob, no layers) as ``repo:tag``: enough for the registry and for
    KWOK pods, which never pull. ``build`` makes the digest unique. Returns the digest."""
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                      "config": {"Labels": {"slipway.test/build": build or tag}}}).encode()
    digest = _put_blob(registry.url, repo, cfg)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [],
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": len(cfg), "digest": digest}}).encode()
    r = requests.put(f"{registry.url}/v2/{repo}/manifests/{tag}", data=manifest,
                     headers={"Content-Type": MANIFEST}, timeout=10)
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]
