"""etcd: the control plane's store.

Recipe: ``go build go.etcd.io/etcd/server/v3`` at ETCD_VERSION through the wrapper module
``toolchain/etcd/go.mod``. Starts on 127.0.0.1 (client and peer ports picked free, data under
``<state>/etcd``); ready when ``/health`` says ``"health": "true"``; stopped with the cluster's
processes (TERM, then KILL, in reverse start order).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from .base import HERE, _go_env, _http_get, _install_atomically, _run_logged, go_binary

if TYPE_CHECKING:
    from .cache import Toolchain

ETCD_VERSION = "3.5.21"
BINARIES = ("etcd",)


def _build_etcd(tc: Toolchain) -> None:
    log = tc.logdir / "build-etcd.log"
    work = tc.srcdir / "etcd"
    work.mkdir(parents=True, exist_ok=True)
    tmpl = (HERE / "etcd" / "go.mod").read_text()
    tmpl = re.sub(r"(go\.etcd\.io/etcd/server/v3) v[0-9.]+", rf"\1 v{ETCD_VERSION}", tmpl)
    (work / "go.mod").write_text(tmpl)
    env = _go_env()
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    out = work / "out"
    out.mkdir(exist_ok=True)
    _run_logged([go_binary(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "etcd"),
                 "go.etcd.io/etcd/server/v3"], log, cwd=work, env=env)
    _install_atomically(out / "etcd", tc.bindir / "etcd")


def start(cluster, ports: dict, timeout: float) -> str:
    """Start etcd for ``cluster``; returns its client URL once healthy."""
    tc = cluster.tc
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    etcd = cluster._spawn("etcd", [
        tc.bin("etcd"), "--name=slipway", f"--data-dir={cluster.state_dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=slipway={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
        "--quota-backend-bytes=4294967296",
    ])
    cluster._wait("etcd /health",
                  lambda: json.loads(_http_get(etcd_url + "/health")[1]).get("health") == "true",
                  etcd, timeout)
    return etcd_url
