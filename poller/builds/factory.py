"""Pick the build engine the config asks for (``build.engine``)."""

from __future__ import annotations

from collections.abc import Callable

import docker

from poller.builds.builder import Builder, DockerBuilder
from poller.config import Config


def make_builder(cfg: Config, docker_client: Callable[[], docker.DockerClient], *,
                 docker_engine: str = "docker") -> Builder:
    """``docker`` (the default): the engine's classic builder through the docker SDK;
    ``buildkit``: ``buildctl`` against the ``build.buildkit.addresses`` pool."""
    if cfg.build.engine == "buildkit":
        from poller.builds.buildkit import BuildKitBuilder

        # a config without a registry has no sources: its builder never builds
        return BuildKitBuilder(cfg.build.buildkit, cfg.registry, timeout=cfg.build.timeout)  # type: ignore[arg-type]
    return DockerBuilder(docker_client, cfg.registry, timeout=cfg.build.timeout,  # type: ignore[arg-type]
                         engine=docker_engine)
