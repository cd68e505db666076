"""Real git over smart HTTP: ``git http-backend`` behind a small threaded HTTP server.

Serves every bare repository under ``root`` at ``http://127.0.0.1:PORT/<name>.git``, counts
requests, and can require basic auth or inject failures (status + Retry-After).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_BACKEND = None


def _backend() -> str:
    global _BACKEND
    if _BACKEND is None:
        exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip()
        _BACKEND = os.path.join(exec_path, "git-http-backend")
    return _BACKEND


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _serve(self):
        srv: GitHttpServer = self.server.owner
        with srv.lock:
            srv.requests.append((self.command, self.path))
            fault = srv.faults.pop(0) if srv.faults else None
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if fault:
            status, retry_after = fault
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.auth:
            expected = "Basic " + base64.b64encode(srv.auth.encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        env = {
            "GIT_PROJECT_ROOT": str(srv.root), "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        res = subprocess.run([_backend()], input=body, env=env, capture_output=True)
        head, _, payload = res.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = res.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode(errors="replace").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        if srv.transform is not None:  # a broken or hostile server's rewrite of the answer
            payload = srv.transform(path, payload)
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve


class GitHttpServer:
    def __init__(self, root: Path, *, auth: str | None = None):
        self.root = Path(root)
        self.auth = auth  # "user:password"
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[int, int | None]] = []
        #: ``transform(path, body) -> body``, applied to every answer of git http-backend.
        self.transform = None
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def repo_url(self, name: str, *, credentials: str | None = None) -> str:
        base = self.url if not credentials else self.url.replace("http://", f"http://{credentials}@")
        return f"{base}/{name}"

    def fail_next(self, count: int = 1, status: int = 503, retry_after: int | None = None) -> None:
        with self.lock:
            self.faults.extend([(status, retry_after)] * count)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


assert shutil.which("git"), "git is required"


def main(argv=None) -> None:
    """``python -m tests.doubles.git_http ROOT``: serve ROOT, print the URL, run until killed."""
    import sys

    root = Path((argv or sys.argv[1:])[0])
    srv = GitHttpServer(root)
    print(srv.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
