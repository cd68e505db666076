"""Settings for fleet rollouts (the ``fleet:`` section).

The same section is shared by the poller (which starts rollouts) and by every machine's agent
(``poller agent --config F``); only the agent reads ``fleet.agent``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from poller.names import check_image_repository, valid_name
from poller.settings.base import SettingsModel


class EtcdConfig(SettingsModel):
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:2379"],
                                 description="etcd client URLs (v3 JSON gateway); tried in order")
    prefix: str = Field("/dc", description="every fleet key lives under this prefix")
    timeout: float = Field(5.0, gt=0, description="seconds per etcd request")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = "/" + v.strip("/")
        if v == "/":
            raise ValueError("must not be empty or '/'")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one endpoint")
        return [e.rstrip("/") if "://" in e else "http://" + e.rstrip("/") for e in v]


class HealthCheck(SettingsModel):
    """How an agent decides a switched container is healthy."""

    kind: str = Field("docker", description="'docker' (the image's HEALTHCHECK) or 'http'")
    port: int | None = Field(None, description="http: the container port to call: its published host "
                             "binding; a host-network container is called on 127.0.0.1:port (its "
                             "'slipway.port' label overrides); else the container's own address")
    path: str = Field("/health", description="http: the path that must answer 2xx")
    timeout: float = Field(30.0, gt=0, description="seconds a new container gets to become healthy")
    request_timeout: float = Field(2.0, gt=0, description="http: seconds one health request may take")

    @model_validator(mode="after")
    def _kind(self) -> HealthCheck:
        if self.kind not in ("docker", "http"):
            raise ValueError("kind must be 'docker' or 'http'")
        if self.kind == "http" and self.port is None:
            raise ValueError("an http health check needs 'port'")
        return self


class ServiceConfig(SettingsModel):
    image: str = Field(description="repository without tag, e.g. 127.0.0.1:5000/lobby; versions are tags")
    depends_on: list[str] = Field(default_factory=list, description="services fully upgraded before this one")
    max_unavailable: int = Field(1, ge=1, description="machines of this service switching at once")
    min_available: int = Field(0, ge=0, description="machines that must stay up (0: no floor)")
    health: HealthCheck = HealthCheck()
    stop_timeout: int = Field(10, ge=0, description="seconds the old container gets to stop before SIGKILL")

    _image = field_validator("image")(classmethod(lambda cls, v: check_image_repository(v)))


class AgentConfig(SettingsModel):
    """Read by ``poller agent`` only: this machine."""

    machine: str = Field(description="this machine's name, unique in the fleet")
    containers: dict[str, str] = Field(description="service -> name of its container on this machine")
    docker_url: str | None = Field(None, description="Docker engine; default: docker.base_url, else "
                                   "DOCKER_HOST (and DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), else the local socket")
    lease_ttl: int = Field(10, ge=2, description="seconds; a silent agent's claims expire after this")
    interval: float = Field(1.0, gt=0, description="longest wait between two looks at etcd")
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels put on containers it creates")

    @field_validator("machine")
    @classmethod
    def _machine(cls, v: str) -> str:
        if not valid_name(v):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-'")
        return v


class FleetConfig(SettingsModel):
    etcd: EtcdConfig = EtcdConfig()
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    agent: AgentConfig | None = None
    auto_rollout: bool = Field(False, description="poller run: start a rollout when a newer release tag "
                               "of a service's image appears in the registry")
    interval: float = Field(30.0, gt=0, description="poller run: seconds between looks for new releases")

    @model_validator(mode="after")
    def _graph(self) -> FleetConfig:
        for name, svc in self.services.items():
            if not valid_name(name):
                raise ValueError(f"services.{name}: names are lowercase letters, digits, '.', '_' or '-'")
            for dep in svc.depends_on:
                if dep not in self.services:
                    raise ValueError(f"services.{name}.depends_on: no service named '{dep}'")
        order_services(self.services)  # raises on a cycle
        if self.agent is not None:
            for wanted in self.agent.containers:
                if wanted not in self.services:
                    raise ValueError(f"agent.containers.{wanted}: no service named '{wanted}' in fleet.services")
        return self


def order_services(services: dict[str, ServiceConfig], only: list[str] | None = None) -> list[str]:
    """Services in dependency order (dependencies first); ``only`` restricts the result."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in visiting:
            raise ValueError("services depend on each other in a cycle: " + " -> ".join(path + (name,)))
        visiting.add(name)
        for dep in services[name].depends_on:
            visit(dep, path + (name,))
        visiting.discard(name)
        done.append(name)

    for name in sorted(services):
        visit(name, ())
    return [n for n in done if only is None or n in only]


def dependencies(services: dict[str, ServiceConfig], name: str) -> set[str]:
    """Every service ``name`` depends on, directly or not."""
    out: set[str] = set()
    stack = list(services[name].depends_on)
    while stack:
        dep = stack.pop()
        if dep not in out:
            out.add(dep)
            stack.extend(services[dep].depends_on)
    return out
