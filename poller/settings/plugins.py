"""Settings for plugin artifacts (the ``plugins:`` section).

Plugins (.jar files) are OCI artifacts in the registry at ``<registry>/<repository>/<plugin>``,
tagged with their version (semver or ``staging``). Each server type declares its plugin set
with a version rule; for every environment Slipway keeps a channel tag
``<environment>-<server type>`` on each plugin pointing at the artifact those servers must run,
and the servers' fetch script (``fetch-plugins.sh``) downloads the channel at start-up.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from poller.names import check_plugin_name, check_repository_path, valid_name
from poller.settings.base import SettingsModel

_RULE = re.compile(r"^(latest|staging|\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?|\d+(\.\d+)?\.x)$")
PRODUCTION_NAMES = ("production", "prod")


class ServerType(SettingsModel):
    plugins: dict[str, str] = Field(description="plugin -> version rule: 'latest' (highest release), "
                                    "'staging', an exact version, or '1.x' / '1.2.x'")
    depends_on: list[str] = Field(default_factory=list, description="server types restarted before this one")
    max_unavailable: int = Field(1, ge=1, description="servers of this type restarting at once")
    busy_labels: dict[str, list[str]] | None = Field(
        None, description="Kubernetes: pod label -> values that mean players are on it; "
        "default: plugins.kube.busy_labels")
    fleet_service: str | None = Field(
        None, description="Docker hosts with a fleet: the fleet.services entry whose etcd quorum slots "
        "a plugin restart takes; default: the service of the same name, if any")

    @field_validator("plugins")
    @classmethod
    def _rules(cls, v: dict[str, str]) -> dict[str, str]:
        for plugin, rule in v.items():
            check_plugin_name(plugin)
            if not _RULE.match(rule):
                raise ValueError(f"{plugin}: rule '{rule}' is not latest, staging, X.Y.Z, X.x or X.Y.x")
        return v


class Environment(SettingsModel):
    fast_track: bool = Field(False, description="allow `poller plugin push FILE --env NAME` straight to it")
    production: bool = Field(False, description="a production environment never takes the fast track")
    kubernetes_namespace: str | None = Field(None, description="servers are pods in this namespace "
                                             "(restart: delete the outdated pod; busy pods drain first)")


class ServerProbe(SettingsModel):
    """How Slipway reads a server: its container port serving the fetch report and busy marker."""

    port: int = Field(8080, description="container port (its host binding is looked up)")
    report_path: str = Field("/plugins/plugins.txt", description="what fetch-plugins.sh wrote")
    busy_path: str = Field("/busy", description="answers 2xx while players are on the server")
    drain_command: list[str] = Field(["/bin/busybox", "touch", "/www/draining"],
                                     description="run in the container to ask it to drain (no new players)")
    undrain_command: list[str] = Field(["/bin/busybox", "rm", "-f", "/www/draining"],
                                       description="run after its restart: take players again")
    stop_timeout: int = Field(10, ge=0, description="seconds an idle server gets to stop before SIGKILL")
    drain_timeout: float = Field(3600.0, gt=0, description="a drain longer than this is reported, never forced")
    restart_timeout: float = Field(60.0, gt=0, description="a restarted server must report within this")


class KubeSettings(SettingsModel):
    """How plugin restarts read and drain game-server pods."""

    busy_labels: dict[str, list[str]] = Field(
        default_factory=lambda: {"slipway.io/busy": ["true"], "game.kruise.io/gs-opsState": ["Allocated"],
                                 "opsState": ["Allocated"]},
        description="pod label -> values meaning players are on the pod (any match: busy)")
    drain_annotation: str = Field("slipway.io/drain", description="set to 'requested' on a busy outdated pod")
    record_configmap: str = Field("slipway-plugins", description="ConfigMap (in the environment's namespace) "
                                  "holding the plugin set each server type's channel was last seen at")


class PluginsConfig(SettingsModel):
    repository: str = Field("plugins", description="registry path prefix for plugin artifacts")
    server_types: dict[str, ServerType] = Field(default_factory=dict)
    environments: dict[str, Environment] = Field(default_factory=dict)
    probe: ServerProbe = ServerProbe()
    kube: KubeSettings = KubeSettings()
    docker_url: str | None = Field(None, description="Docker engine of the servers; default: docker.base_url, "
                                      "else DOCKER_HOST, else the local socket")
    kubeconfig: str | None = Field(None, description="for Kubernetes environments; default: in-cluster, "
                                   "then ~/.kube/config")
    interval: float = Field(30.0, gt=0, description="poller run: seconds between plugin cycles")

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        return check_repository_path(v.strip("/"), "plugin repository (e.g. 'plugins', 'game/plugins')")

    @model_validator(mode="after")
    def _check(self) -> PluginsConfig:
        for name, env in self.environments.items():
            if not valid_name(name):
                raise ValueError(f"environments.{name}: lowercase letters, digits, '.', '_' or '-'")
            if env.fast_track and (env.production or name in PRODUCTION_NAMES):
                raise ValueError(f"environments.{name}.fast_track: production refuses the fast track")
        for name, st in self.server_types.items():
            if not valid_name(name):
                raise ValueError(f"server_types.{name}: lowercase letters, digits, '.', '_' or '-'")
            for dep in st.depends_on:
                if dep not in self.server_types:
                    raise ValueError(f"server_types.{name}.depends_on: no server type '{dep}'")
        type_order(self)  # raises on a cycle
        return self

    def is_production(self, env: str) -> bool:
        e = self.environments.get(env)
        return env in PRODUCTION_NAMES or bool(e and e.production)


def type_order(cfg: PluginsConfig) -> list[str]:
    """Server types, the ones others depend on first."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError("server types depend on each other in a cycle: " + " -> ".join(path + (name,)))
        for dep in cfg.server_types[name].depends_on:
            visit(dep, path + (name,))
        done.append(name)

    for name in sorted(cfg.server_types):
        visit(name, ())
    return done


def channel_tag(environment: str, server_type: str) -> str:
    return f"{environment}-{server_type}"


def fast_track_tag(environment: str) -> str:
    return f"fast-{environment}"
