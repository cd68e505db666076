"""Request and response models of the poller's API.

Request bodies are validated with these (unknown fields are a 400), and the OpenAPI document
(:mod:`poller.api.openapi`) is generated from them, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


_WHO = Field(None, max_length=200, description="who decided (default: 'token')")


# -- requests ---------------------------------------------------------------------------------
class Decision(_Request):
    """Body of ``POST /api/v1/approvals/<id>/approve|reject`` (optional)."""

    by: str | None = _WHO


class Actor(_Request):
    """Optional body of unpin and rollout control calls."""

    by: str | None = _WHO


class Pin(_Request):
    """Body of ``POST /api/v1/updates/deployments/<name>/pin``."""

    version: str = Field(min_length=1, max_length=128, description="the tag to hold at")
    by: str | None = _WHO


class FleetRollout(_Request):
    """``{"service": S, "version": V}`` or ``{"services": {S: V, ...}}`` (one deploy queue)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["service", "version"]}, {"required": ["services"]}]})

    # Typed without None: an explicit null is a 400, an absent field is fine.
    service: str = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]
    version: str = Field(None, min_length=1, max_length=128)  # type: ignore[assignment]
    services: dict[Annotated[str, Field(min_length=1, max_length=200)],
                   Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        None, min_length=1, max_length=100)  # type: ignore[arg-type]
    reason: str = Field(None, max_length=1000)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one_form(self) -> FleetRollout:
        if self.services is None and (self.service is None or self.version is None):
            raise ValueError("give 'service' and 'version', or 'services': {name: version}")
        return self

    def versions(self) -> dict[str, str]:
        if self.services is not None:
            return dict(self.services)
        assert self.service is not None and self.version is not None
        return {self.service: self.version}


class RollbackRequest(_Request):
    """Body of ``POST /api/v1/rollbacks/<service>``: staging goes back to an earlier build
    (``to``: a build id or ``sha-<commit>``; default the previous one), production to the
    release ``to`` (X.Y.Z, required) by tagging its commit with the next patch version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"env": {"const": "production"}}},
        "then": {"required": ["to"]}})

    env: Literal["staging", "production"]
    to: str = Field(None, min_length=1, max_length=128)  # type: ignore[assignment]
    reason: str = Field("", max_length=1000, description="why (audit log, notification)")
    dry_run: bool = Field(False, description="only say what would be done")
    by: str | None = _WHO

    @model_validator(mode="after")
    def _production_needs_to(self) -> RollbackRequest:
        if self.env == "production" and self.to is None:
            raise ValueError("env 'production' needs 'to': the release X.Y.Z to go back to")
        return self


# -- responses --------------------------------------------------------------------------------
class Error(BaseModel):
    error: str = Field(description="machine-readable code, e.g. not_found")
    message: str


class Health(BaseModel):
    ok: bool


class Build(_Response):
    id: int
    source: str
    image: str
    ref: str
    kind: str
    sha: str
    tags: list[str]
    digest: str | None
    status: str
    error: str | None
    started_at: float
    finished_at: float | None
    duration: float | None


class BuildWithLog(Build):
    log: str


class Approval(_Response):
    id: int
    kind: str
    subject: str
    from_version: str | None
    to_version: str
    reason: str
    status: str
    created_at: float
    decided_at: float | None
    decided_by: str | None
    expires_at: float | None


class SourceStatus(_Response):
    name: str
    kind: str
    branch: str | None
    image: str
    head: str | None
    last_poll: float | None
    last_error: str | None


class Status(_Response):
    sources: list[SourceStatus]
    builds: list[Build]
    approvals: list[Approval]


class Queued(_Response):
    source: str


class Published(_Response):
    plugin: str
    version: str
    digest: str


class Deployment(_Response):
    deployment: str


class WebhookAnswer(_Response):
    """What a webhook receiver answers (``matched`` lists what it acted on)."""


class Rollback(_Response):
    """What a rollback will do (``dry_run``) or did (``done``)."""

    service: str
    env: str
    image: str
    steps: list[str]
    from_digest: str | None
    to_digest: str | None
    to_sha: str | None
    to_build: int | None
    from_version: str | None
    tag: str | None
    dry_run: bool
    done: bool
    by: str
    reason: str


class Rollbacks(_Response):
    holds: list[dict]
    recent: list[dict]
