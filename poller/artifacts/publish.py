"""Publishing a plugin build: the regular path (a version) and the fast track (an environment)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from poller.artifacts.store import Artifact, ArtifactError, ArtifactStore
from poller.names import check_plugin_name
from poller.settings.plugins import PluginsConfig, fast_track_tag

_VERSION_SUFFIX = re.compile(r"[-_]v?\d+\.\d+\.\d+.*$")


def plugin_name(path: Path) -> str:
    """``chat-1.2.3.jar`` -> ``chat``."""
    return _VERSION_SUFFIX.sub("", path.stem).lower()


def publish(store: ArtifactStore, cfg: PluginsConfig, plugin: str, jar: bytes, *,
            version: str | None = None, env: str | None = None) -> Artifact:
    """Push ``jar``. With ``env`` it is a fast-track push: allowed only where the environment
    says ``fast_track: true`` and never in production; it also moves ``fast-<env>``."""
    check_plugin_name(plugin)
    if env is None:
        if version is None:
            raise ArtifactError("give a version (semver or 'staging') or a fast-track --env")
        return store.push(plugin, jar, version)
    if cfg.is_production(env):
        raise ArtifactError(f"environment '{env}' is production: it refuses the fast track")
    environment = cfg.environments.get(env)
    if environment is None:
        raise ArtifactError(f"no environment '{env}' in plugins.environments")
    if not environment.fast_track:
        raise ArtifactError(f"environment '{env}' does not allow the fast track (fast_track: false)")
    if not any(plugin in st.plugins for st in cfg.server_types.values()):
        raise ArtifactError(f"no server type uses plugin '{plugin}'")
    version = version or f"0.0.0-fast.{re.sub('[^0-9A-Za-z-]', '-', env)}.{int(time.time())}"
    return store.push(plugin, jar, version, also_tag=(fast_track_tag(env),))
