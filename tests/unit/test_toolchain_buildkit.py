"""scripts/toolchain's BuildKit step: its own cache entry and the wrapper module it builds from."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def toolchain():
    """The toolchain package (toolchain/slipway_toolchain/), as scripts/toolchain imports it."""
    if str(ROOT / "toolchain") not in sys.path:
        sys.path.insert(0, str(ROOT / "toolchain"))
    return importlib.import_module("slipway_toolchain")


def test_buildkit_has_its_own_cache_entry_and_leaves_the_kubernetes_key_alone(tmp_path, monkeypatch):
    st = toolchain()
    monkeypatch.setenv("SLIPWAY_TOOLCHAIN_DIR", str(tmp_path))
    # Unchanged: a new key would force every machine into a cold Kubernetes build.
    assert st.versions_key() == ("k8s-1.32.5_etcd-3.5.21_kwok-0.8.0_helm-3.20.2_chartmuseum-0.16.5"
                                 "_helmsman-4.0.5_r1")
    bk = st.BuildKitToolchain()
    assert bk.bindir == tmp_path / "buildkit-0.34.2_r1" / "bin"
    assert bk.missing() == ["buildkitd", "buildctl"]
    assert "buildkitd" not in st.ALL_BINARIES


def test_wrapper_module_keeps_buildkits_requirements_and_excludes():
    st = toolchain()
    upstream = ("module github.com/moby/buildkit\n\ngo 1.26.8\n\nrequire (\n\tgithub.com/a/b v1.2.3\n)\n\n"
                "exclude (\n\tgithub.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc\n)\n")
    out = st.buildkit_wrapper_gomod(upstream)
    assert out.splitlines()[1] == "module slipway.local/toolchain/buildkit"
    assert "github.com/a/b v1.2.3" in out and "exclude (" in out and "go-spew" in out
    assert out.rstrip().endswith("require github.com/moby/buildkit v0.34.2")
    with pytest.raises(st.ToolchainError, match="replace"):
        st.buildkit_wrapper_gomod(upstream + "replace github.com/a/b => ../b\n")
