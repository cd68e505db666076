"""helm: ``go install helm.sh/helm/v3/cmd/helm@vHELM_VERSION`` with version ldflags (its
default Kubernetes version set to the control plane's minor). Not a service: tests run it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import _go_install
from .kube import KUBE_VERSION

if TYPE_CHECKING:
    from .cache import Toolchain

HELM_VERSION = "3.20.2"
BINARIES = ("helm",)


def _build_helm(tc: Toolchain) -> None:
    ld = " ".join([
        "-s -w",
        f"-X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={KUBE_VERSION.split('.')[1]}",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={KUBE_VERSION.split('.')[1]}",
    ])
    _go_install(tc, "helm", f"helm.sh/helm/v3/cmd/helm@v{HELM_VERSION}", ld)


