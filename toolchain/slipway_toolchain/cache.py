"""The Kubernetes toolchain's cache entry: its key, its binaries, and building what is missing.

``<cache root>/<versions_key()>/bin`` holds every binary of the components below; the key names
each component's version and the RECIPE, so a bump builds a fresh entry. The real node's
kubelet and pause image (``node.py``) share the entry; BuildKit (``buildkit.py``) and
OpenKruiseGame/Kruise (``okg.py``) have entries of their own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import chartmuseum, etcd, helm, helmsman, kube, kwok
from .base import ToolchainError, _lock, _log, _refresh_substitutes, cache_root
from .chartmuseum import CHARTMUSEUM_VERSION
from .etcd import ETCD_VERSION
from .helm import HELM_VERSION
from .helmsman import HELMSMAN_VERSION
from .kube import KUBE_BINARIES, KUBE_VERSION
from .kwok import KWOK_VERSION

# Bump when the way binaries are built changes, so stale caches are not reused.
RECIPE = "1"

ALL_BINARIES = KUBE_BINARIES + ("etcd", "kwok", "helm", "chartmuseum", "helmsman",
                                "kubelet", "pause")  # the last two: node.py


def versions_key() -> str:
    return (
        f"k8s-{KUBE_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"
        f"_chartmuseum-{CHARTMUSEUM_VERSION}_helmsman-{HELMSMAN_VERSION}_r{RECIPE}"
    )



class Toolchain:
    """Where the built binaries live."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / versions_key()
        self.bindir = self.root / "bin"
        self.logdir = self.root / "logs"
        self.srcdir = self.root / "src"

    def bin(self, name: str) -> str:
        path = self.bindir / name
        if not path.exists():
            raise ToolchainError(f"{name} is not built (expected {path}); run scripts/toolchain build")
        return str(path)

    def missing(self) -> list[str]:
        return [b for b in ALL_BINARIES if not (self.bindir / b).exists()] + (
            [] if (self.root / "kwok-stages.yaml").exists() else ["kwok-stages.yaml"]
        )

    @property
    def kwok_stages(self) -> Path:
        return self.root / "kwok-stages.yaml"

    def substitutes(self) -> dict[str, str]:
        """Binaries installed as stand-ins because the real one could not be built."""
        p = self.root / "substitutes.json"
        if p.exists():
            return json.loads(p.read_text())
        return {}



BUILDERS = [
    (etcd.BINARIES, etcd._build_etcd),
    (kube.KUBE_BINARIES, kube._build_kube),
    (kwok.BINARIES, kwok._build_kwok),
    (("kwok-stages.yaml",), kwok._build_kwok_stages),
    (helm.BINARIES, helm._build_helm),
    (chartmuseum.BINARIES, chartmuseum._build_chartmuseum),
    (helmsman.BINARIES, helmsman._build_helmsman),
]


def _node():
    """node.py (the real node), imported on first use: it builds on the whole package."""
    from . import node

    return node


def _okg():
    """okg.py (OpenKruiseGame + Kruise), imported on first use."""
    from . import okg

    return okg


def build(tc: Toolchain | None = None) -> Toolchain:
    """Build every missing binary into the cache. Idempotent."""
    tc = tc or Toolchain()
    _refresh_substitutes(tc)
    if not tc.missing():
        return tc
    with _lock(tc.root.parent / f"{tc.root.name}.lock"):
        for d in (tc.bindir, tc.logdir, tc.srcdir):
            d.mkdir(parents=True, exist_ok=True)
        for names, fn in BUILDERS + _node().BUILDERS:
            have = [n for n in names if (tc.bindir / n).exists() or (tc.root / n).exists()]
            if len(have) == len(names):
                continue
            started = time.monotonic()
            _log(f"building {', '.join(names)} (log: {tc.logdir})")
            fn(tc)
            _log(f"built {', '.join(names)} in {time.monotonic() - started:.0f}s")
    return tc

