"""Typed settings of the helm API.

Read from the environment (prefix ``HELM_API_``) only by the entry points
(:mod:`helm_api.__main__`, :mod:`helm_api.wsgi`) through :func:`load_settings`; everything
below them gets a :class:`HelmApiConfig` passed in. Tests build one directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from poller.errors import ConfigError
from poller.names import check_dns_label, check_file_name


class HelmApiConfig(BaseModel):
    """What the app needs, validated. Every field has a safe default except the token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = Field(
        None, description="bearer token every mutating call must carry; None (or empty) refuses "
                          "them all")
    namespace: str = Field("default", description="namespace of the CronJob and its Jobs")
    cronjob: str = Field("helmsman-cronjob", description="the CronJob used as the Job template")
    container: str | None = Field(
        None, description="container of the job template that runs helmsman (default: the first)")
    environments: dict[str, str] = Field(
        default_factory=lambda: {"staging": "staging.yaml", "production": "production.yaml"},
        description="environment name -> desired-state (DSS) file the helmsman job applies")
    default_environment: str | None = Field(
        None, description="environment of a bare POST /apply (default: the only one configured)")
    dss_env_var: str = Field("DSS_FILE", description="env var that carries the DSS file name")
    kubeconfig: str | None = Field(None, description="kubeconfig path; None with in_cluster")
    in_cluster: bool = Field(False, description="use the pod's service account")
    follow_up_interval: float = Field(
        2.0, gt=0, description="seconds between checks whether a queued follow-up can start")
    log_tail_lines: int = Field(50, ge=0, le=5000, description="pod log lines in GET /jobs/<name>")
    jobs_limit: int = Field(20, ge=1, le=500, description="runs listed by GET /jobs")

    @field_validator("token")
    @classmethod
    def _empty_token_is_unset(cls, v: SecretStr | None) -> SecretStr | None:
        # An empty token never authenticates: it is the same as no token (every call refused).
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("namespace", "cronjob")
    @classmethod
    def _dns(cls, v: str) -> str:
        return check_dns_label(v)

    @field_validator("environments")
    @classmethod
    def _envs(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("configure at least one environment")
        for name, dss in v.items():
            check_dns_label(name, "environment")
            if len(name) > 20:
                raise ValueError(f"environment '{name}' must be a short DNS label (at most 20)")
            check_file_name(dss, f"environment '{name}': DSS file")
        return v

    @field_validator("default_environment")
    @classmethod
    def _known_default(cls, v: str | None, info: ValidationInfo) -> str | None:
        environments = info.data.get("environments")
        if v and environments is not None and v not in environments:
            raise ValueError(f"'{v}' is not one of the environments ({', '.join(sorted(environments))})")
        return v

    @property
    def resolved_default_environment(self) -> str | None:
        if self.default_environment:
            return self.default_environment
        if len(self.environments) == 1:
            return next(iter(self.environments))
        return None


class _EnvSettings(BaseSettings):
    """The raw environment: ``HELM_API_TOKEN`` or ``HELM_API_TOKEN_FILE``, ``HELM_API_NAMESPACE``,
    ``HELM_API_CRONJOB``, ``HELM_API_ENVIRONMENTS`` (JSON object), ``HELM_API_KUBECONFIG`` or
    ``HELM_API_IN_CLUSTER=true``, ..."""

    model_config = SettingsConfigDict(env_prefix="HELM_API_", extra="ignore")

    token: SecretStr | None = None
    token_file: str | None = None
    namespace: str | None = None
    namespace_file: str | None = Field(
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
        description="read the namespace from here in-cluster when HELM_API_NAMESPACE is unset")
    cronjob: str = "helmsman-cronjob"
    container: str | None = None
    environments: dict[str, str] | None = None
    default_environment: str | None = None
    dss_env_var: str = "DSS_FILE"
    kubeconfig: str | None = None
    in_cluster: bool = False
    follow_up_interval: float = 2.0
    log_tail_lines: int = 50


def load_settings() -> HelmApiConfig:
    """Build the config from the process environment. Raises ConfigError."""
    try:
        raw = _EnvSettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        reason = err["msg"]
        if err["loc"][:1] == ("environments",) and err["type"] == "dict_type":
            reason = 'must be a JSON object of environment -> DSS file, e.g. {"staging": "staging.yaml"}'
        raise ConfigError(reason, file="<environment>",
                          key="HELM_API_" + "_".join(map(str, err["loc"])).upper()) from None
    token = raw.token
    if token is None and raw.token_file:
        try:
            token = SecretStr(Path(raw.token_file).read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read token file {raw.token_file}: {exc.strerror}",
                              file="<environment>", key="HELM_API_TOKEN_FILE") from None
    if token is not None and not token.get_secret_value().strip():
        from poller.logs import get_logger

        get_logger("helm_api.config").warning(
            "config.empty_secret", key="HELM_API_TOKEN_FILE" if raw.token is None else "HELM_API_TOKEN",
            effect="treated as unset: POST /apply refuses every token")
        token = None
    namespace = raw.namespace
    if namespace is None and raw.in_cluster and raw.namespace_file:
        try:
            namespace = Path(raw.namespace_file).read_text().strip()
        except OSError:
            namespace = None
    data: dict[str, Any] = {
        "token": token, "namespace": namespace or "default", "cronjob": raw.cronjob,
        "container": raw.container, "default_environment": raw.default_environment,
        "dss_env_var": raw.dss_env_var, "kubeconfig": raw.kubeconfig,
        "in_cluster": raw.in_cluster, "follow_up_interval": raw.follow_up_interval,
        "log_tail_lines": raw.log_tail_lines,
    }
    if raw.environments is not None:
        data["environments"] = raw.environments
    if raw.kubeconfig and not raw.in_cluster and not Path(raw.kubeconfig).is_file():
        raise ConfigError(f"{raw.kubeconfig} is not a file (a kubeconfig: give its path, or set "
                          "HELM_API_IN_CLUSTER=true inside the cluster)", file="<environment>",
                          key="HELM_API_KUBECONFIG")
    try:
        return HelmApiConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(err["msg"].removeprefix("Value error, "), file="<environment>",
                          key="HELM_API_" + str(err["loc"][0]).upper()) from None


class LogSettings(BaseSettings):
    """``HELM_API_LOG_LEVEL`` and ``HELM_API_LOG_FORMAT`` (the same choices as ``poller``'s
    ``--log-level`` and ``--log-format``)."""

    model_config = SettingsConfigDict(env_prefix="HELM_API_", extra="ignore")

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"


def load_log_settings() -> LogSettings:
    """How to log, from the environment. Raises ConfigError."""
    try:
        return LogSettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(err["msg"], file="<environment>",
                          key="HELM_API_" + str(err["loc"][0]).upper()) from None


class ServeConfig(BaseModel):
    """Where ``helm-api`` listens: ``HELM_API_HOST`` (default all interfaces, as a container
    needs) and ``HELM_API_PORT`` (default 8080); ``--host``/``--port`` override them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("0.0.0.0", min_length=1, description="address to bind")
    port: int = Field(8080, ge=1, le=65535, description="TCP port")


class _ServeEnv(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HELM_API_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = 8080


def load_serve_config(host: str | None = None, port: int | None = None) -> ServeConfig:
    """The listen address from the environment, overridden by the given values. Raises ConfigError."""
    try:
        raw = _ServeEnv()
        return ServeConfig(host=host if host is not None else raw.host,
                           port=port if port is not None else raw.port)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0])
        given = {"host": host, "port": port}.get(field) is not None
        raise ConfigError(err["msg"], file="command line" if given else "<environment>",
                          key=f"--{field}" if given else "HELM_API_" + field.upper()) from None
