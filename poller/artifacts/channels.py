"""Decide which artifact each (environment, server type) must run, and point its channel tag at it.

A version rule picks the artifact; in an environment with ``fast_track: true`` a developer's
push (tag ``fast-<environment>``) wins over the rule for as long as that tag exists. Production
never reads the fast-track tag.
"""

from __future__ import annotations

from poller.artifacts.store import Artifact, ArtifactStore
from poller.logs import get_logger
from poller.settings.plugins import PluginsConfig, channel_tag, fast_track_tag

log = get_logger("poller.artifacts")


def desired(store: ArtifactStore, cfg: PluginsConfig, env: str,
            incomplete: dict[str, str] | None = None) -> dict[str, dict[str, Artifact]]:
    """server type -> plugin -> the artifact its servers in ``env`` must run.

    Only server types whose whole set resolves are in the answer; the others (a plugin with
    no release yet that matches its rule) are left out, with the reason in ``incomplete``."""
    environment = cfg.environments.get(env)
    fast = environment is not None and environment.fast_track and not cfg.is_production(env)
    out: dict[str, dict[str, Artifact]] = {}
    for type_name, st in cfg.server_types.items():
        chosen: dict[str, Artifact] = {}
        for plugin, rule in st.plugins.items():
            artifact = store.get(plugin, fast_track_tag(env)) if fast else None
            artifact = artifact or store.resolve(plugin, rule)
            if artifact is None:
                if incomplete is not None:
                    incomplete[type_name] = f"{plugin}: nothing in the registry matches '{rule}' yet"
                break
            chosen[plugin] = artifact
        else:
            out[type_name] = chosen
    return out


def sync_channels(store: ArtifactStore, cfg: PluginsConfig, env: str,
                  incomplete: dict[str, str] | None = None) -> dict[str, dict[str, Artifact]]:
    """Move every ``<env>-<type>`` tag to the desired artifact; returns the desired set.

    All or nothing per channel: a server type whose set is incomplete keeps its channel as it
    is (reported in ``incomplete``), and when moving one plugin's tag fails the plugins of
    that channel already moved are put back before the error is raised."""
    incomplete = {} if incomplete is None else incomplete
    wanted = desired(store, cfg, env, incomplete)
    for type_name, reason in incomplete.items():
        log.info("plugins.channel_incomplete", env=env, server_type=type_name, reason=reason)
    for type_name, plugins in wanted.items():
        tag = channel_tag(env, type_name)
        before = {plugin: store.get(plugin, tag) for plugin in plugins}
        moved: list[str] = []
        try:
            for plugin, artifact in plugins.items():
                current = before[plugin]
                if current is None or current.manifest.digest != artifact.manifest.digest:
                    store.tag(artifact, tag)
                    moved.append(plugin)
        except Exception:
            for plugin in moved:
                if before[plugin] is not None:
                    store.tag(before[plugin], tag)  # type: ignore[arg-type]
            raise
        for plugin in moved:
            artifact = plugins[plugin]
            log.info("plugins.channel_moved", env=env, server_type=type_name, plugin=plugin,
                     version=artifact.version, digest=artifact.digest[:19])
    return wanted
