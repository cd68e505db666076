"""Request and response models of the helm API.

``POST /apply`` bodies are validated with :class:`ApplyRequest` (unknown fields are a 400) and
the answers are built from the response models, and the OpenAPI document
(:mod:`helm_api.openapi`) is generated from these same classes, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from poller.httpapi import ApiError

#: Longest ``reason`` an apply may carry.
MAX_REASON = 1000


class ApplyRequest(BaseModel):
    """Body of ``POST /apply`` (optional when a default environment is configured)."""

    model_config = ConfigDict(extra="forbid")

    environment: StrictStr | None = Field(
        None, description="selects the desired-state file (one of the configured environments)")
    reason: StrictStr = Field("", max_length=MAX_REASON,
                              description="why; stored on the Job as an annotation")

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ApplyRequest:
        """The validated body; a 400 :class:`ApiError` naming the field on failure."""
        unknown = sorted(set(body) - set(cls.model_fields))
        if unknown:
            raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(unknown)}")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0])
            if field == "reason":
                raise ApiError(400, "bad_request", "'reason' must be a string of at most "
                               f"{MAX_REASON} characters") from None
            raise ApiError(400, "bad_request", f"'{field}' must be a string") from None


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every error answer (:func:`poller.httpapi.error_response`)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="machine-readable code, e.g. unknown_environment")
    message: str
    known: list[str] | None = Field(None, description="the configured environments")


class ApplyResponse(_Response):
    """202 answer of ``POST /apply``."""

    job: str = Field(description="the run created, or the one already running")
    environment: str
    created: bool
    follow_up_queued: bool
    status_url: str


class JobSummary(_Response):
    """One run in ``GET /jobs``."""

    name: str
    environment: str | None
    phase: Literal["pending", "running", "succeeded", "failed"]
    created_at: str | None = Field(description="RFC 3339")
    started_at: str | None
    finished_at: str | None
    reason: str | None = None
    follows: str | None = Field(None, description="the run this follow-up was queued behind")


class JobDetail(JobSummary):
    """``GET /jobs/<name>``: a run, its newest pod and the tail of that pod's log."""

    pod: str | None
    log: str | None = Field(description="tail of the pod's log")
    log_error: str | None = None


class FollowUp(_Response):
    """A follow-up run queued for an environment behind its running one."""

    after: str = Field(description="the running Job it waits for")
    requests: int
    reasons: list[str]


class JobList(_Response):
    """``GET /jobs``: recent runs, newest first, and the queued follow-ups by environment."""

    jobs: list[JobSummary]
    queued: dict[str, FollowUp]


class Status(_Response):
    """``/healthz`` and ``/readyz``."""

    status: str


REQUESTS: tuple[type[BaseModel], ...] = (ApplyRequest,)
RESPONSES: tuple[type[BaseModel], ...] = (Error, ApplyResponse, JobSummary, JobDetail, JobList,
                                          Status)
