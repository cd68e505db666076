"""Settings for the BuildKit build engine (``build.engine: buildkit``)::

    build:
      engine: buildkit
      buildkit:
        addresses:
          - unix:///run/buildkit/buildkitd.sock
          - address: tcp://buildkitd-1.buildkitd:1234
            ca_cert: /etc/slipway/buildkit/ca.pem
            cert: /etc/slipway/buildkit/cert.pem
            key: /etc/slipway/buildkit/key.pem
        cache_ref: "{image}:buildcache"     # the default
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from poller.imageref import ImageRef
from poller.settings.base import SettingsModel


class BuildKitEndpoint(SettingsModel):
    """One ``buildkitd``: a unix socket, or TCP with TLS."""

    address: str = Field(description="unix:///path/to/buildkitd.sock or tcp://host:port")
    ca_cert: str | None = Field(None, description="CA certificate that signed the daemon's (tcp://)")
    cert: str | None = Field(None, description="client certificate (tcp://, with key)")
    key: str | None = Field(None, description="client key (tcp://, with cert)")
    server_name: str | None = Field(None, description="name in the daemon's certificate; default: the host")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v.startswith("unix://"):
            if not v[len("unix://"):].startswith("/"):
                raise ValueError("a unix:// address needs an absolute socket path (unix:///run/buildkit/buildkitd.sock)")
            return v
        if v.startswith("tcp://"):
            hostport = v[len("tcp://"):]
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit() or "/" in hostport:
                raise ValueError("a tcp:// address is tcp://host:port")
            return v
        raise ValueError("must start with unix:// or tcp://")

    @model_validator(mode="after")
    def _tls(self) -> BuildKitEndpoint:
        if self.address.startswith("tcp://") and not self.ca_cert:
            raise ValueError(f"{self.address}: a tcp:// builder needs TLS: set ca_cert (and cert + key "
                             f"when the daemon checks clients)")
        if bool(self.cert) != bool(self.key):
            raise ValueError(f"{self.address}: give both cert and key, or neither")
        if self.address.startswith("unix://") and (self.ca_cert or self.cert or self.key):
            raise ValueError(f"{self.address}: TLS settings apply to tcp:// addresses only")
        return self


class BuildKitConfig(SettingsModel):
    addresses: list[BuildKitEndpoint] = Field(
        default_factory=list, description="the builder pool: each a unix:// or tcp:// address "
        "(a plain string) or a mapping with address and TLS files")
    cache_ref: str = Field("{image}:buildcache", description="registry cache ref; {image} is the "
                           "source's image repository")
    cache_mode: Literal["min", "max"] = Field("max", description="max: cache every stage's layers")
    buildctl: str = Field("buildctl", description="the buildctl command (a path, or a name on PATH)")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to reach a builder (health checks too)")
    retry_unhealthy: float = Field(30.0, ge=0, description="seconds a builder that failed a health check "
                                   "is skipped before it is tried again")
    stall_check: float = Field(30.0, gt=0, description="with no build output for this long, the builder "
                               "is health-checked; a dead builder fails the build")

    @field_validator("addresses", mode="before")
    @classmethod
    def _strings(cls, v):
        if isinstance(v, list):
            return [{"address": a} if isinstance(a, str) else a for a in v]
        return v

    @field_validator("cache_ref")
    @classmethod
    def _cache_ref(cls, v: str) -> str:
        rest = v.replace("{image}", "")
        if "{" in rest or "}" in rest:
            raise ValueError("only {image} may be used in braces")
        ref = ImageRef.parse(v)
        if not ref.tag and not ref.digest:
            raise ValueError("give a tag, e.g. '{image}:buildcache'")
        return v

    def cache_for(self, image: str) -> str:
        return self.cache_ref.replace("{image}", image)

    @model_validator(mode="after")
    def _unique(self) -> BuildKitConfig:
        seen = set()
        for ep in self.addresses:
            if ep.address in seen:
                raise ValueError(f"{ep.address} is listed twice")
            seen.add(ep.address)
        return self
