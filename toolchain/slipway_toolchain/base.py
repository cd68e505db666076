"""What every component shares: paths, defaults, errors, logging, Go builds, processes.

Standard library only (the toolchain runs before any project dependency is installed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cache import Toolchain

HERE = Path(__file__).resolve().parent.parent  # toolchain/
REPO = HERE.parent
CRD_FILE = REPO / "charts" / "game-server" / "crds" / "gameserverset.yaml"

DEFAULT_CACHE_ROOT = "/var/cache/slipway/toolchain"
DEFAULT_STATE_DIR = "/tmp/slipway-cluster"
DEFAULT_REGISTRY = "127.0.0.1:5000"  # scripts/services' docker-registry


def _pause(seconds: float) -> None:
    """Poll interval inside condition waits that all have deadlines."""
    threading.Event().wait(seconds)


class ToolchainError(RuntimeError):
    pass


class ClusterStartError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[toolchain] {msg}", file=sys.stderr, flush=True)


def tail(path: Path | str, lines: int = 40) -> str:
    try:
        data = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data[-lines:])


def cache_root() -> Path:
    return Path(os.environ.get("SLIPWAY_TOOLCHAIN_DIR") or DEFAULT_CACHE_ROOT)


# --------------------------------------------------------------------------
# Go builds
# --------------------------------------------------------------------------

def go_binary() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise ToolchainError("the go command was not found (expected /usr/local/go/bin/go)")
    return go


def _go_env() -> dict:
    env = os.environ.copy()
    env.setdefault("GOFLAGS", "")
    return env


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, cwd=cwd, env=env or _go_env(), stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        raise ToolchainError(f"command failed (rc={rc}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail(log)}")


def _go_mod_download(module: str, log: Path) -> dict:
    cmd = [go_binary(), "mod", "download", "-json", module]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_go_env())
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        raise ToolchainError(f"go mod download {module} failed: {proc.stderr.strip()}")
    if info.get("Error"):
        raise ToolchainError(f"go mod download {module} failed: {info['Error']}")
    return info


def _version_ldflags(pkgs: list[str], git_version: str) -> str:
    major, minor = git_version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for p in pkgs:
        flags += [
            f"-X {p}.gitVersion={git_version}",
            f"-X {p}.gitMajor={major}",
            f"-X {p}.gitMinor={minor}",
            f"-X {p}.gitTreeState=clean",
            f"-X {p}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _install_atomically(built: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(built, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def _go_install(tc: Toolchain, name: str, pkg_at_version: str, ldflags: str = "-s -w") -> None:
    log = tc.logdir / f"build-{name}.log"
    gobin = tc.srcdir / f"gobin-{name}"
    gobin.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    env["GOBIN"] = str(gobin)
    _run_logged([go_binary(), "install", "-trimpath", f"-ldflags={ldflags}", pkg_at_version], log, env=env)
    built = gobin / pkg_at_version.split("@")[0].rsplit("/", 1)[-1]
    _install_atomically(built, tc.bindir / name)


def _record_substitute(tc: Toolchain, name: str, why: str) -> None:
    p = tc.root / "substitutes.json"
    subs = tc.substitutes()
    subs[name] = why
    p.write_text(json.dumps(subs, indent=2))


def _install_script_substitute(tc: Toolchain, name: str, script: Path) -> None:
    """Install a stand-in: a copy of ``script`` inside the cache (so the cache never points
    into one particular checkout) and a wrapper under the binary's name."""
    tc.bindir.mkdir(parents=True, exist_ok=True)
    libdir = tc.root / "lib"
    libdir.mkdir(parents=True, exist_ok=True)
    copy = libdir / script.name
    shutil.copyfile(script, copy)
    dest = tc.bindir / name
    tmp = dest.with_name(name + ".tmp")
    tmp.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{copy}" "$@"\n')
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def _refresh_substitutes(tc: Toolchain) -> None:
    """Re-copy the stand-ins from this checkout on every build: cheap, and a fix to a
    stand-in reaches a warm cache without bumping the recipe."""
    for name in tc.substitutes():
        script = HERE / f"{name}_compat.py"
        if script.exists() and tc.bindir.exists():
            _install_script_substitute(tc, name, script)


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)



# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_starttime(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot): guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _pid_alive(pid: int, starttime: str | None = None) -> bool:
    current = _proc_starttime(pid)
    if current is None:
        return False
    return starttime is None or current == starttime


def _http_get(url: str, token: str | None = None, cafile: str | None = None, timeout: float = 3.0):
    if url.startswith("https"):
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
        else:
            ctx = ssl._create_unverified_context()  # self-signed component health ports
    else:
        ctx = None
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class _Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path, exe: str):
        self.name, self.popen, self.log, self.exe = name, popen, log, exe
        self.starttime = _proc_starttime(popen.pid)

    def as_dict(self) -> dict:
        return {"name": self.name, "pid": self.popen.pid, "log": str(self.log), "exe": self.exe,
                "starttime": self.starttime}




def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
