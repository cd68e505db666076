"""ChartMuseum: the chart repository of the cluster lane.

Recipe: ``go install helm.sh/chartmuseum/cmd/chartmuseum@vCHARTMUSEUM_VERSION``; when the module
proxy refuses it (403), the stand-in ``toolchain/chartmuseum_compat.py`` is installed under that
name and listed in ``substitutes.json``. Starts on 127.0.0.1 with local storage; ready on
``/health``; stopped with the cluster's processes (or by the caller, without ``spawn``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .base import (
    HERE,
    ClusterStartError,
    ToolchainError,
    _go_install,
    _http_get,
    _install_script_substitute,
    _log,
    _pause,
    _record_substitute,
    tail,
)

if TYPE_CHECKING:
    from .cache import Toolchain

CHARTMUSEUM_VERSION = "0.16.5"
BINARIES = ("chartmuseum",)


def _build_chartmuseum(tc: Toolchain) -> None:
    try:
        _go_install(tc, "chartmuseum", f"helm.sh/chartmuseum/cmd/chartmuseum@v{CHARTMUSEUM_VERSION}",
                    f"-s -w -X main.Version=v{CHARTMUSEUM_VERSION}")
    except ToolchainError as exc:
        if "403" not in str(exc) and "not available" not in str(exc):
            raise
        why = (f"helm.sh/chartmuseum@v{CHARTMUSEUM_VERSION} is refused by the module proxy "
               f"(403); installed toolchain/chartmuseum_compat.py (ChartMuseum HTTP API subset)")
        _log("WARNING: " + why)
        _install_script_substitute(tc, "chartmuseum", HERE / "chartmuseum_compat.py")
        _record_substitute(tc, "chartmuseum", why)



def start_chartmuseum(tc: Toolchain, storage_dir: Path, port: int, spawn=None, timeout: float = 60.0) -> dict:
    """Start ChartMuseum with local storage; returns {url, storage_dir, pid, log, popen}.

    ``spawn(name, argv)`` (Cluster._spawn) records the process for `down`; without
    it the process is started here and the caller must stop it.
    """
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    argv = [tc.bin("chartmuseum"), f"--port={port}", "--listen-host=127.0.0.1", "--storage=local",
            f"--storage-local-rootdir={storage_dir}", "--disable-statefiles"]
    if spawn is not None:
        proc = spawn("chartmuseum", argv)
        popen, log = proc.popen, proc.log
    else:
        log = storage_dir.parent / f"chartmuseum-{port}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _http_get(url + "/health")[0] == 200:
                break
        except OSError:
            pass
        if popen.poll() is not None:
            raise ClusterStartError(f"chartmuseum exited with code {popen.returncode}\n"
                                    f"--- {log} (tail) ---\n{tail(log)}")
        if time.monotonic() > deadline:
            popen.kill()
            raise ClusterStartError(f"timed out waiting for chartmuseum /health\n--- {log} ---\n{tail(log)}")
        _pause(0.1)  # poll interval of a condition wait with a deadline
    return {"url": url, "storage_dir": str(storage_dir), "pid": popen.pid, "log": str(log), "popen": popen}

