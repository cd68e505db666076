"""Decide which artifact each (environment, server type) must run, and point its channel tag at it.

A version rule picks the artifact; in an environment with ``fast_track: true`` a developer's
push (tag ``fast-<environment>``) wins over the rule for as long as that tag exists. Production
never reads the fast-track tag.
"""

from __future__ import annotations

from poller.artifacts.settings import PluginsConfig, channel_tag, fast_track_tag
from poller.artifacts.store import Artifact, ArtifactError, ArtifactStore
from poller.logs import get_logger

log = get_logger("poller.artifacts")


def desired(store: ArtifactStore, cfg: PluginsConfig, env: str) -> dict[str, dict[str, Artifact]]:
    """server type -> plugin -> the artifact its servers in ``env`` must run."""
    environment = cfg.environments.get(env)
    fast = environment is not None and environment.fast_track and not cfg.is_production(env)
    out: dict[str, dict[str, Artifact]] = {}
    for type_name, st in cfg.server_types.items():
        chosen: dict[str, Artifact] = {}
        for plugin, rule in st.plugins.items():
            artifact = store.get(plugin, fast_track_tag(env)) if fast else None
            artifact = artifact or store.resolve(plugin, rule)
            if artifact is None:
                raise ArtifactError(f"{plugin}: nothing in the registry matches '{rule}' "
                                    f"(server type {type_name})")
            chosen[plugin] = artifact
        out[type_name] = chosen
    return out


def sync_channels(store: ArtifactStore, cfg: PluginsConfig, env: str) -> dict[str, dict[str, Artifact]]:
    """Move every ``<env>-<type>`` tag to the desired artifact; returns the desired set."""
    wanted = desired(store, cfg, env)
    for type_name, plugins in wanted.items():
        tag = channel_tag(env, type_name)
        for plugin, artifact in plugins.items():
            current = store.get(plugin, tag)
            if current is None or current.manifest.digest != artifact.manifest.digest:
                store.tag(artifact, tag)
                log.info("plugins.channel_moved", env=env, server_type=type_name, plugin=plugin,
                         version=artifact.version, digest=artifact.digest[:19])
    return wanted
