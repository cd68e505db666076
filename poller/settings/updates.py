"""Settings for the deployment updater (the ``updates:`` section).

Each deployment names an image, a policy (how it may move), an approval rule, a target
(where the image runs) and, for game servers, how to roll out and reload::

    updates:
      interval: 60
      deployments:
        - name: game-staging
          image: 127.0.0.1:5000/game-server
          policy: digest            # follow the mutable tag below by digest
          tag: staging
          target: {kubernetes: {kind: Deployment, name: game, namespace: staging, container: engine}}
        - name: game-prod
          image: 127.0.0.1:5000/game-server
          policy: minor             # patch | minor | major | all | glob | regex | digest
          approval: major           # none | major | all
          target: {helm: {release: game, namespace: prod, chart: ./charts/game-server,
                           value_path: engine.image.tag}}
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from poller.names import check_dns_label, check_dns_subdomain
from poller.settings.base import (
    SettingsModel,
    check_image_repository,
    check_name,
    one_of,
    split_url_credentials,
)

_TARGET_KINDS = ("kubernetes", "helm", "docker")

_LABEL = re.compile(r"^[A-Za-z0-9./_-]+(=[A-Za-z0-9._-]*)?$")
_PERCENT = re.compile(r"^(100|[1-9]?\d)%$")


def _int_or_percent(v: int | str) -> int | str:
    if isinstance(v, int):
        if v < 0:
            raise ValueError("must be >= 0")
        return v
    if not _PERCENT.match(str(v)):
        raise ValueError("must be a count (2) or a percentage (25%)")
    return str(v)


class RegistryAuth(SettingsModel):
    """Credentials for a registry other than the main ``registry:`` one."""

    url: str = Field(description="host[:port], optionally with http:// or https://")
    insecure: bool = False
    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        return split_url_credentials(data)


class KubernetesTarget(SettingsModel):
    kind: Literal["Deployment", "StatefulSet", "DaemonSet", "GameServerSet"]
    name: str
    namespace: str = "default"
    container: str = Field(description="the only container whose image is changed")
    kubeconfig: str | None = Field(None, description="default: updates.kubeconfig, then in-cluster")
    context: str | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: check_dns_subdomain(v, "name")))
    _labels = field_validator("namespace", "container")(
        classmethod(lambda cls, v, info: check_dns_label(v, info.field_name)))


class HelmTarget(SettingsModel):
    release: str
    namespace: str = "default"
    chart: str = Field(description="chart reference to upgrade with: a path, repo/name or oci:// URL")
    repo: str | None = Field(None, description="chart repository URL, when chart is a bare name")
    version: str | None = Field(None, description="chart version; default: the deployed one")
    value_path: str = Field("image.tag", description="dotted path of the value that holds the image")
    value_format: Literal["tag", "reference"] = Field(
        "tag", description="tag: write '1.4.0' (or 'staging@sha256:..'); reference: 'repo:tag[@digest]'")
    kubeconfig: str | None = None
    helm: str | None = Field(None, description="helm executable; default: updates.helm")

    _release = field_validator("release")(classmethod(lambda cls, v: check_dns_subdomain(v, "release")))
    _namespace = field_validator("namespace")(classmethod(lambda cls, v: check_dns_label(v, "namespace")))


class DockerTarget(SettingsModel):
    container: str = Field(description="name of the container to replace")
    base_url: str | None = Field(None, description="Docker engine URL; default: docker.base_url")


class TargetConfig(SettingsModel):
    kubernetes: KubernetesTarget | None = None
    helm: HelmTarget | None = None
    docker: DockerTarget | None = None

    @model_validator(mode="after")
    def _one(self) -> TargetConfig:
        one_of(self, _TARGET_KINDS)
        return self

    @property
    def kind(self) -> str:
        return one_of(self, _TARGET_KINDS)


class RolloutConfig(SettingsModel):
    """Gradual release over a workload's pods, driven by Slipway (patching pods in place).

    Slipway patches the workload's template (so new pods get the image), then each pod's
    container image, step by step. Where a controller would also roll the pods itself (a real
    OpenKruiseGame), hold it: a GameServerSet gets ``updateStrategy.rollingUpdate.paused: true``
    (OpenKruiseGame v1.0.0 turns ``type: OnDelete`` into RollingUpdate on its Advanced
    StatefulSet; ``paused`` it passes on), so that Slipway is the only one moving pods; without
    ``rollout:`` the controller does it.
    """

    steps: list[int | str] = Field(default_factory=lambda: list[int | str]([1, "50%", "100%"]),
                                   description="cumulative servers updated after each step: a count or a percentage")
    max_unavailable: int | str = Field(1, description="servers updating at once (count or percentage)")
    selector: dict[str, str] | None = Field(
        None, description="pod labels; default for GameServerSet: game.kruise.io/owner-gss=<name>")
    priority_label: str = Field("game.kruise.io/gs-update-priority",
                                description="numeric pod label; see priority_order")
    priority_order: Literal["high-first", "low-first"] = Field(
        "high-first", description="OpenKruiseGame's updatePriority: a larger value is updated first")
    busy_label: str | None = Field(None, description="'key' or 'key=value': a pod with it has players")
    ops_state_label: str = "game.kruise.io/gs-opsState"
    busy_ops_states: list[str] = Field(default_factory=lambda: ["Allocated"],
                                       description="OpenKruiseGame opsStates that mean players are on")
    restart: bool = Field(True, description="the update restarts the game process: busy servers wait until free")
    health_timeout: float = Field(300.0, gt=0, description="seconds a step may take to become healthy")
    busy_wait: float = Field(600.0, ge=0, description="seconds to wait for busy servers to free up per run")
    poll: float = Field(1.0, gt=0, description="seconds between checks while waiting")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list) -> list:
        if not v:
            raise ValueError("give at least one step")
        return [_int_or_percent(s) for s in v]

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, v):
        v = _int_or_percent(v)
        if v in (0, "0%"):
            raise ValueError("must allow at least one server at a time")
        return v

    @field_validator("busy_label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not _LABEL.match(v):
            raise ValueError("must be 'key' or 'key=value'")
        return v


class HttpReload(SettingsModel):
    port: int = Field(gt=0, lt=65536)
    path: str = Field("/reload", description="'{server}' is replaced by the server (pod/container) name")
    method: Literal["GET", "POST", "PUT"] = "POST"
    attempts: int = Field(10, ge=1, le=1000, description="tries per server until a 2xx")
    backoff: float = Field(0.5, ge=0, description="seconds between tries (doubling, at most 10)")
    timeout: float = Field(5.0, gt=0)


class ExecReload(SettingsModel):
    command: list[str] = Field(min_length=1)
    container: str | None = Field(None, description="container to exec in; default: the target's")
    timeout: float = Field(60.0, gt=0)


class ReloadConfig(SettingsModel):
    http: HttpReload | None = None
    exec: ExecReload | None = None

    @model_validator(mode="after")
    def _one(self) -> ReloadConfig:
        if (self.http is None) == (self.exec is None):
            raise ValueError("give exactly one of 'http' or 'exec'")
        return self


class DeploymentConfig(SettingsModel):
    name: str
    image: str = Field(description="repository, e.g. 127.0.0.1:5000/game-server (no tag)")
    policy: Literal["digest", "patch", "minor", "major", "all", "glob", "regex"]
    tag: str | None = Field(None, description="the mutable tag followed by policy: digest")
    pattern: str | None = Field(None, description="glob or regular expression for those policies")
    prereleases: bool = False
    approval: Literal["none", "major", "all"] = "none"
    approval_ttl: float | None = Field(None, gt=0, description="seconds; default: updates.approval_ttl")
    pin: str | None = Field(None, description="stay on this tag; automation does not move it")
    target: TargetConfig
    rollout: RolloutConfig | None = Field(None, description="drive a gradual in-place release over the pods")
    reload: ReloadConfig | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _image = field_validator("image")(classmethod(lambda cls, v: check_image_repository(v)))

    @model_validator(mode="after")
    def _policy_args(self) -> DeploymentConfig:
        if self.policy == "digest" and not self.tag:
            raise ValueError("policy 'digest' needs 'tag' (the mutable tag to follow)")
        if self.policy in ("glob", "regex") and not self.pattern:
            raise ValueError(f"policy '{self.policy}' needs 'pattern'")
        if self.policy == "regex":
            try:
                re.compile(self.pattern or "")
            except re.error as exc:
                raise ValueError(f"pattern: not a valid regular expression: {exc}") from exc
        if self.rollout is not None and self.target.kind != "kubernetes":
            raise ValueError("rollout needs a kubernetes target")
        if self.approval == "major" and self.policy not in ("patch", "minor", "major", "all"):
            raise ValueError(f"approval 'major' needs a semver policy (patch, minor, major, all); "
                             f"policy '{self.policy}' has no major versions: say 'none' or 'all'")
        return self

    @property
    def registry_host(self) -> str:
        return self.image.split("/", 1)[0]

    @property
    def repository(self) -> str:
        return self.image.split("/", 1)[1]


class UpdatesConfig(SettingsModel):
    interval: float = Field(60.0, gt=0, description="seconds between registry checks")
    approval_ttl: float | None = Field(7 * 86400.0, gt=0, description="pending approvals expire after")
    backoff_max: float = Field(900.0, gt=0, description="longest wait after registry failures, s")
    workers: int = Field(8, ge=1, le=256, description="deployments checked and patched at once")
    cluster_concurrency: int = Field(4, ge=1, le=256,
                                     description="writes in flight at once per cluster (or Docker engine)")
    registry_concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once per registry")
    kubeconfig: str | None = Field(None, description="default kubeconfig for kubernetes and helm targets")
    helm: str = Field("helm", description="helm executable for helm targets")
    registries: list[RegistryAuth] = Field(default_factory=list,
                                           description="registries besides the main one")
    deployments: list[DeploymentConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> UpdatesConfig:
        seen: dict[str, int] = {}
        for i, d in enumerate(self.deployments):
            if d.name in seen:
                raise ValueError(f"deployments[{i}].name: '{d.name}' is already used by "
                                 f"deployments[{seen[d.name]}]")
            seen[d.name] = i
        return self

    def deployment(self, name: str) -> DeploymentConfig | None:
        return next((d for d in self.deployments if d.name == name), None)
