#!/usr/bin/env python3
"""Stand-in for ChartMuseum, used only when the real one cannot be built.

The module proxy this project reaches refuses helm.sh/chartmuseum (403), so
`scripts/toolchain build` installs this script as `chartmuseum` in the
toolchain bin directory and records that in substitutes.json.  It implements
the part of ChartMuseum's HTTP API that Slipway and its tests use, with local
storage, and accepts ChartMuseum's command-line flags for it:

  GET  /health                     {"healthy": true}
  GET  /index.yaml                 Helm repository index
  GET  /charts/<name>-<ver>.tgz    chart package
  GET  /api/charts                 {name: [chartversion, ...]}
  GET  /api/charts/<name>          [chartversion, ...]
  GET  /api/charts/<name>/<ver>    chartversion (<ver> "latest": newest stable version)
  HEAD /api/charts/<name>[/<ver>]  200 or 404
  POST /api/charts                 body: .tgz, or multipart form field "chart"
                                   (POST /api/charts/ with a trailing slash: 404)
  DELETE /api/charts/<name>/<ver>

Like ChartMuseum v0.16.5, index.yaml carries no ETag and no Last-Modified, a conditional
request gets the full 200, and the body is byte-identical between GETs until the stored
charts change (``generated`` is the time the index was last rebuilt, not of the request).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import io
import json
import re
import sys
import tarfile
import threading
from email.parser import BytesParser
from email.policy import default as _email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

VERSION = "0.16.5-slipway-compat"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_chart_metadata(data: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.strip("./").split("/")
            if len(parts) == 2 and parts[1] == "Chart.yaml":
                meta = yaml.safe_load(tar.extractfile(member).read())
                if not isinstance(meta, dict) or not meta.get("name") or not meta.get("version"):
                    raise ValueError("Chart.yaml lacks name or version")
                return meta
    raise ValueError("no <chart>/Chart.yaml in the package")


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.created: dict[str, str] = {}
        self._index: tuple[tuple, bytes] | None = None

    def _state(self) -> tuple:
        """What the index depends on: the stored packages (name, size, mtime)."""
        out = []
        for p in sorted(self.root.glob("*.tgz")):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def index_body(self) -> bytes:
        """index.yaml, rebuilt only when the stored charts changed."""
        with self.lock:
            state = self._state()
            if self._index is None or self._index[0] != state:
                index = {"apiVersion": "v1", "entries": self.entries(), "generated": _now(),
                         "serverInfo": {}}
                self._index = (state, yaml.safe_dump(index, sort_keys=False).encode())
            return self._index[1]

    def _packages(self):
        for p in sorted(self.root.glob("*.tgz")):
            try:
                data = p.read_bytes()
                meta = read_chart_metadata(data)
            except (OSError, ValueError, tarfile.TarError, yaml.YAMLError):
                continue
            entry = dict(meta)
            entry["urls"] = [f"charts/{p.name}"]
            entry["digest"] = hashlib.sha256(data).hexdigest()
            entry["created"] = self.created.setdefault(p.name, _dt.datetime.fromtimestamp(
                p.stat().st_mtime, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            entry.setdefault("apiVersion", "v1")
            yield entry

    def entries(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for e in self._packages():
            out.setdefault(e["name"], []).append(e)
        for versions in out.values():
            versions.sort(key=lambda e: _version_key(e["version"]), reverse=True)
        return out

    def save(self, data: bytes, overwrite: bool) -> tuple[int, dict]:
        try:
            meta = read_chart_metadata(data)
        except (ValueError, tarfile.TarError, OSError, yaml.YAMLError) as exc:
            return 400, {"error": f"invalid chart package: {exc}"}
        fname = f"{meta['name']}-{meta['version']}.tgz"
        if not re.fullmatch(r"[A-Za-z0-9._+-]+\.tgz", fname):
            return 400, {"error": "invalid chart name or version"}
        with self.lock:
            dest = self.root / fname
            if dest.exists() and not overwrite:
                return 409, {"error": "file already exists"}
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
            self.created[fname] = _now()
        return 201, {"saved": True}

    def delete(self, name: str, version: str) -> bool:
        with self.lock:
            p = self.root / f"{name}-{version}.tgz"
            if p.exists() and p.parent == self.root:
                p.unlink()
                self.created.pop(p.name, None)
                return True
        return False


def _is_prerelease(v: str) -> bool:
    return "-" in v.split("+", 1)[0]


def _version_key(v: str):
    """Semver precedence (a release after its prereleases; numeric identifiers numerically)."""
    core, _, pre = v.lstrip("v").split("+", 1)[0].partition("-")
    nums = [int(p) if p.isdigit() else 0 for p in core.split(".")]
    if not pre:
        return (nums, 1, ())
    return (nums, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))


def make_handler(store: Store, opts):
    class Handler(BaseHTTPRequestHandler):
        server_version = f"ChartMuseum/{VERSION}"

        def log_message(self, fmt, *args):
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

        def _auth_ok(self) -> bool:
            if not opts.basic_auth_user:
                return True
            header = self.headers.get("Authorization", "")
            expected = base64.b64encode(f"{opts.basic_auth_user}:{opts.basic_auth_pass}".encode()).decode()
            if header == f"Basic {expected}":
                return True
            if opts.auth_anonymous_get and self.command in ("GET", "HEAD"):
                return True
            self._send(401, {"error": "unauthorized"}, extra={"WWW-Authenticate": 'Basic realm="chartmuseum"'})
            return False

        def _send(self, code: int, body, ctype="application/json", extra=None):
            if isinstance(body, (dict, list)):
                payload = json.dumps(body).encode()
            elif isinstance(body, str):
                payload = body.encode()
            else:
                payload = body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _path(self) -> str:
            path = self.path.split("?", 1)[0]
            if opts.context_path and path.startswith(opts.context_path):
                path = path[len(opts.context_path):] or "/"
            return path

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            if not self._auth_ok():
                return
            path = self._path()
            if path == "/health":
                return self._send(200, {"healthy": True})
            if path in ("/", ""):
                return self._send(200, "<html><body>ChartMuseum (Slipway stand-in)</body></html>", "text/html")
            if path == "/index.yaml":
                # no ETag / Last-Modified, conditional headers ignored: always the full 200
                return self._send(200, store.index_body(), "application/x-yaml")
            m = re.fullmatch(r"/charts/([A-Za-z0-9._+-]+\.tgz)", path)
            if m:
                p = store.root / m.group(1)
                if p.exists():
                    return self._send(200, p.read_bytes(), "application/x-tar")
                return self._send(404, {"error": "not found"})
            if opts.disable_api:
                return self._send(404, {"error": "not found"})
            if path == "/api/charts":
                return self._send(200, store.entries())
            m = re.fullmatch(r"/api/charts/([^/]+)(?:/([^/]+))?", path)
            if m:
                versions = store.entries().get(m.group(1))
                if not versions:
                    return self._send(404, {"error": "chart not found"})
                if m.group(2) is None:
                    return self._send(200, versions)
                want = m.group(2)
                if want == "latest":
                    stable = [v for v in versions if not _is_prerelease(v["version"])]
                    if not stable:
                        return self._send(404, {"error": "chart version not found"})
                    return self._send(200, stable[0])
                for v in versions:
                    if v["version"] == want:
                        return self._send(200, v)
                return self._send(404, {"error": "improper constraint: " + want})
            return self._send(404, {"error": "not found"})

        def do_POST(self):
            if not self._auth_ok():
                return
            path = self._path()
            if opts.disable_api or path != "/api/charts":
                return self._send(404, {"error": "not found"})
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                msg = BytesParser(policy=_email_policy).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + body)
                chart = None
                for part in msg.iter_parts():
                    if part.get_param("name", header="content-disposition") == "chart":
                        chart = part.get_payload(decode=True)
                if chart is None:
                    return self._send(400, {"error": "no chart field in form"})
                body = chart
            code, resp = store.save(body, overwrite=opts.allow_overwrite or "force" in self.path)
            return self._send(code, resp)

        def do_DELETE(self):
            if not self._auth_ok():
                return
            m = re.fullmatch(r"/api/charts/([^/]+)/([^/]+)", self._path())
            if opts.disable_api or opts.disable_delete or not m:
                return self._send(404, {"error": "not found"})
            if store.delete(m.group(1), m.group(2)):
                return self._send(200, {"deleted": True})
            return self._send(404, {"error": "not found"})

    return Handler


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="chartmuseum")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--listen-host", default="0.0.0.0")
    ap.add_argument("--storage", default="local")
    ap.add_argument("--storage-local-rootdir", default="./chartstorage")
    ap.add_argument("--context-path", default="")
    ap.add_argument("--basic-auth-user", default="")
    ap.add_argument("--basic-auth-pass", default="")
    ap.add_argument("--auth-anonymous-get", action="store_true")
    ap.add_argument("--allow-overwrite", action="store_true")
    ap.add_argument("--disable-api", action="store_true")
    ap.add_argument("--disable-delete", action="store_true")
    ap.add_argument("--disable-statefiles", action="store_true")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--version", action="store_true")
    opts, _unknown = ap.parse_known_args(argv)
    if opts.version:
        print(f"ChartMuseum version: {VERSION}")
        return 0
    if opts.storage != "local":
        print(f"only --storage=local is supported by this stand-in, got {opts.storage}", file=sys.stderr)
        return 2
    store = Store(Path(opts.storage_local_rootdir))
    httpd = ThreadingHTTPServer((opts.listen_host, opts.port), make_handler(store, opts))
    print(f"chartmuseum stand-in listening on {opts.listen_host}:{opts.port}, storage {store.root}",
          file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
