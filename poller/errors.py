"""Slipway's own exception tree.

Every error that crosses a module boundary is one of these, chained ``from`` the
library error that caused it. The scheduler decides what to do from the type:

* :class:`UpstreamError` is temporary: retry later, honouring ``retry_after``.
* :class:`PermanentError` (and its children) will not fix itself by waiting.

The HTTP APIs answer each kind with one status (:data:`poller.httpapi.STATUS`): not found 404,
auth 403, invalid input 400, upstream unreachable 503, unprocessable 422, conflict and other
permanent refusals 409, anything else 500. ``code`` names the error in the JSON answer when a class wants its own.
"""

from __future__ import annotations


class SlipwayError(Exception):
    """Base of every error Slipway raises on purpose."""

    #: The ``error`` code an HTTP API answers with; None: the status table's.
    code: str | None = None


class ConfigError(SlipwayError):
    """The configuration is invalid. Carries the file, the key path and the reason."""

    def __init__(self, reason: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.reason = reason
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class StoreError(SlipwayError):
    """The store file can't be used (not a database, damaged, old schema, read-only). The
    message names the file and what to do."""


class PermanentError(SlipwayError):
    """Retrying without a change (new commit, new config) will not help."""


class UpstreamError(SlipwayError):
    """An upstream (git host, registry, API server) failed in a way that may pass.

    ``retry_after`` is the delay in seconds the upstream asked for (``Retry-After``),
    or ``None`` when it gave none and the caller's own back-off applies.
    """

    def __init__(self, message: str, *, upstream: str = "", status: int | None = None,
                 retry_after: float | None = None):
        self.upstream = upstream
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class ResponseTooLarge(UpstreamError):
    """An upstream answered with more than Slipway reads from it (a body, a ref list)."""


class NotFound(PermanentError):
    """The thing asked for does not exist upstream (a 404, a missing ref)."""


class Conflict(PermanentError):
    """Refused because of the current state (a 409: exists, already decided, changed since read)."""


class InvalidInput(PermanentError):
    """What was asked for is malformed or names nothing known (a 400 at an HTTP API)."""


class Unprocessable(PermanentError):
    """Understood, but what it names cannot be used as it is (a 422 at an HTTP API)."""


class AuthError(PermanentError):
    """Credentials were refused (401/403)."""


class SourceError(SlipwayError):
    """A source could not be read (bad remote URL, unknown project)."""


class BuildError(PermanentError):
    """An image build failed (broken Dockerfile, failing RUN step). The log says why."""

    def __init__(self, message: str, *, log: str = ""):
        self.log = log
        super().__init__(message)


class PushError(UpstreamError):
    """Pushing an image to the registry failed."""


class RollbackRefused(PermanentError):
    """A rollback that would be wrong as asked (no earlier build, the newer tag exists)."""


class ApprovalRequired(SlipwayError):
    """An update is waiting for a person to approve it."""
