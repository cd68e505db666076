"""Build, start and stop Slipway's local Kubernetes test toolchain.

Used by ``scripts/toolchain`` (command line, :mod:`.cli`) and by ``tests/fixtures/cluster.py``
(pytest fixtures). Everything is built from Go modules with the Go toolchain into a cache
directory keyed by versions, and started on 127.0.0.1 with free-picked ports under a state
directory. Only the Python standard library is used, so it runs before any project dependency
is installed.

One module per component, each with its recipe (what is built, from which module and version),
how it starts, how readiness is checked and how it stops:

=================  ==========================================================================
``etcd``           etcd (wrapper module ``toolchain/etcd/go.mod``)
``kube``           kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
``kwok``           kwok and its fake nodes
``helm``           helm
``chartmuseum``    ChartMuseum (or its stand-in)
``helmsman``       helmsman (or its stand-in)
``node``           the real node: kubelet, pause image, containerd + runc + bridge CNI
``okg``            OpenKruiseGame + Kruise managers, CRDs, webhooks (own cache entry)
``buildkit``       buildkitd + buildctl (own cache entry) and one running buildkitd
=================  ==========================================================================

and the driver: ``base`` (paths, errors, Go builds, processes), ``cache`` (``versions_key()``,
:class:`Toolchain`, ``build()``), ``cluster`` (:class:`Cluster`: up, down, state), ``cli``.
This module re-exports their names (``slipway_toolchain.Cluster``, ``.build``, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent.parent)  # toolchain/: oci_push, the stand-ins
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from .base import (
    CRD_FILE,
    DEFAULT_CACHE_ROOT,
    DEFAULT_REGISTRY,
    DEFAULT_STATE_DIR,
    HERE,
    REPO,
    ClusterStartError,
    ToolchainError,
    _go_env,
    _go_install,
    _go_mod_download,
    _http_get,
    _install_atomically,
    _install_script_substitute,
    _lock,
    _log,
    _pause,
    _pid_alive,
    _Proc,
    _proc_starttime,
    _record_substitute,
    _refresh_substitutes,
    _run_logged,
    _version_ldflags,
    cache_root,
    free_port,
    go_binary,
    reap,
    tail,
)
from .buildkit import (
    BUILDKIT_BINARIES,
    BUILDKIT_RECIPE,
    BUILDKIT_VERSION,
    DEFAULT_BUILDKIT_STATE_DIR,
    BuildKitd,
    BuildKitToolchain,
    _build_buildkit,
    build_buildkit,
    buildkit_key,
    buildkit_wrapper_gomod,
)
from .cache import (
    ALL_BINARIES,
    BUILDERS,
    RECIPE,
    Toolchain,
    _node,
    _okg,
    build,
    versions_key,
)
from .chartmuseum import CHARTMUSEUM_VERSION, _build_chartmuseum, start_chartmuseum
from .cli import USAGE, main
from .cluster import STATE_ENTRIES, Cluster
from .etcd import ETCD_VERSION, _build_etcd
from .helm import HELM_VERSION, _build_helm
from .helmsman import HELMSMAN_VERSION, _build_helmsman, helmsman_module_query
from .kube import KUBE_BINARIES, KUBE_VERSION, _build_kube, kube_wrapper_gomod
from .kwok import (
    FAKE_NODE_ANNOTATION,
    KWOK_STAGES,
    KWOK_VERSION,
    _build_kwok,
    _build_kwok_stages,
    fake_nodes_yaml,
)

__all__ = [
    "ALL_BINARIES", "BUILDERS", "BUILDKIT_BINARIES", "BUILDKIT_RECIPE", "BUILDKIT_VERSION",
    "CHARTMUSEUM_VERSION", "CRD_FILE", "DEFAULT_BUILDKIT_STATE_DIR", "DEFAULT_CACHE_ROOT",
    "DEFAULT_REGISTRY", "DEFAULT_STATE_DIR", "ETCD_VERSION", "FAKE_NODE_ANNOTATION", "HELMSMAN_VERSION",
    "HELM_VERSION", "HERE", "KUBE_BINARIES", "KUBE_VERSION", "KWOK_STAGES", "KWOK_VERSION", "RECIPE",
    "REPO", "STATE_ENTRIES", "USAGE", "BuildKitToolchain", "BuildKitd", "Cluster", "ClusterStartError",
    "Toolchain", "ToolchainError", "_Proc", "_build_buildkit", "_build_chartmuseum", "_build_etcd",
    "_build_helm", "_build_helmsman", "_build_kube", "_build_kwok", "_build_kwok_stages", "_go_env",
    "_go_install", "_go_mod_download", "_http_get", "_install_atomically", "_install_script_substitute",
    "_lock", "_log", "_node", "_okg", "_pause", "_pid_alive", "_proc_starttime", "_record_substitute",
    "_refresh_substitutes", "_run_logged", "_version_ldflags", "build", "build_buildkit", "buildkit_key",
    "buildkit_wrapper_gomod", "cache_root", "fake_nodes_yaml", "free_port", "go_binary",
    "helmsman_module_query", "kube_wrapper_gomod", "main", "reap", "start_chartmuseum", "tail",
    "versions_key",
]
