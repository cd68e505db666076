"""The typed event bus: what happened, published once by the domain that did it.

Producers (the pipeline, the update engine, the rollouts it drives, the chart watcher)
publish frozen dataclasses; subscribers (metrics, notifications, log correlation, the
dashboard's live logs, the terminal progress) subscribe by type::

    bus.subscribe(UpdateFinished, metrics.on_update)
    bus.publish(UpdateFinished(deployment="prod", ok=True, ...))

A subscriber's exception is logged and swallowed: observing never breaks the producer.
Handlers run synchronously in the producer's thread (log correlation relies on that: a
build's ``BuildStarted`` runs in the build's own thread).

Every event has a dotted ``name`` (``build.succeeded``, ``update.failed``) — the word the
logs, the notification webhooks' ``events:`` filter and the store's audit use.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from poller.logs import CORRELATION_ID, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Event:
    #: The dotted name (logs, notification filters); subclasses with two outcomes override it.
    NAME: ClassVar[str] = "event"

    @property
    def name(self) -> str:
        return self.NAME

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# -- builds (the pipeline) -------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePolled(Event):
    NAME: ClassVar[str] = "source.polled"
    source: str
    unchanged: bool = False
    skipped_registry: bool = False


@dataclass(frozen=True)
class SourceError(Event):
    NAME: ClassVar[str] = "source.error"
    source: str
    error: str
    temporary: bool = False


@dataclass(frozen=True)
class BuildStarted(Event):
    NAME: ClassVar[str] = "build.started"
    build_id: int
    source: str
    image: str
    ref: str
    kind: str
    sha: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildFinished(Event):
    build_id: int
    source: str
    image: str
    ref: str
    kind: str
    sha: str
    ok: bool
    tags: tuple[str, ...] = ()
    duration: float | None = None
    digest: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return "build.succeeded" if self.ok else "build.failed"


@dataclass(frozen=True)
class ImageRetagged(Event):
    NAME: ClassVar[str] = "image.retagged"
    source: str
    image: str
    tag: str
    digest: str
    sha: str


# -- updates (the update engine) -------------------------------------------------------------
@dataclass(frozen=True)
class ApprovalRequested(Event):
    NAME: ClassVar[str] = "approval.requested"
    approval_id: int
    kind: str
    subject: str
    to_version: str
    from_version: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class UpdateFinished(Event):
    """An update of a deployment was applied (``update.succeeded``) or failed (``update.failed``)."""
    deployment: str
    image: str
    ok: bool
    to_ref: str
    from_ref: str | None = None
    update_id: int | None = None
    policy: str | None = None
    reason: str | None = None
    approved_by: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return "update.succeeded" if self.ok else "update.failed"


# -- rollouts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutStarted(Event):
    NAME: ClassVar[str] = "rollout.started"
    deployment: str
    to_ref: str
    rollout_id: int | None = None


@dataclass(frozen=True)
class RolloutProgress(Event):
    NAME: ClassVar[str] = "rollout.progress"
    deployment: str
    to_ref: str
    done: int
    total: int
    rollout_id: int | None = None


@dataclass(frozen=True)
class RolloutFinished(Event):
    NAME: ClassVar[str] = "rollout.finished"
    deployment: str
    to_ref: str
    rollout_id: int | None = None


@dataclass(frozen=True)
class RolloutStopped(Event):
    """A rollout ended without finishing: failed, aborted, or paused for a person."""
    NAME: ClassVar[str] = "rollout.stopped"
    deployment: str
    to_ref: str
    state: str
    message: str = ""
    step: int | None = None
    rollout_id: int | None = None


# -- the fleet (etcd-coordinated agents) ------------------------------------------------------
@dataclass(frozen=True)
class FleetRolloutStarted(Event):
    """The fleet job started a rollout of ``service`` to ``version``; the agents do the rest."""
    NAME: ClassVar[str] = "fleet.rollout"
    service: str
    version: str
    reason: str = ""


# -- charts (the chart watcher) ---------------------------------------------------------------
@dataclass(frozen=True)
class ChartApplied(Event):
    """A chart watch asked the helm API to apply a new chart version (``ok``) or it refused."""
    repo: str
    chart: str
    version: str
    channel: str
    environment: str
    ok: bool
    job: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return "chart.applied" if self.ok else "chart.failed"


E = TypeVar("E", bound=Event)
Handler = Callable[[Any], None]


@dataclass
class EventBus:
    """Publish typed events; subscribers get the events of the type (or a subtype) they chose."""

    _handlers: list[tuple[type[Event], Handler]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        with self._lock:
            if (kind, handler) not in self._handlers:
                self._handlers.append((kind, handler))

    def publish(self, event: Event) -> None:
        with self._lock:
            handlers = [h for k, h in self._handlers if isinstance(event, k)]
        for handler in handlers:
            try:
                handler(event)
            except Exception as exc:  # noqa: BLE001 - a subscriber never breaks the producer
                log.warning("listener.failed", for_event=event.name, error=repr(exc))


def subscribe_log_correlation(bus: EventBus) -> None:
    """Tag log lines with the build or rollout they belong to (``cid``). Builds run in their own
    thread and publish ``BuildStarted`` from it, so the rest of that build's lines (builder,
    registry) carry ``cid=build-<id>``; a pod rollout's lines carry its rollout."""

    def build(e: BuildStarted) -> None:
        CORRELATION_ID.set(f"build-{e.build_id}")

    def rollout(e: RolloutStarted) -> None:
        CORRELATION_ID.set(str(e.rollout_id or f"rollout-{e.deployment}"))

    def ended(e: Event) -> None:
        CORRELATION_ID.set(None)

    bus.subscribe(BuildStarted, build)
    bus.subscribe(BuildFinished, ended)
    bus.subscribe(RolloutStarted, rollout)
    bus.subscribe(RolloutFinished, ended)
    bus.subscribe(RolloutStopped, ended)
