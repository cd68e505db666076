"""Prometheus metrics, fed by the event bus and read from the store at scrape time.

``/metrics`` (``poller/api/core.py``) serves the default registry; :func:`install` subscribes
one :class:`Metrics` to the event bus and lets the scrape read the store::

    slipway_polls_total{source,result}              ok | error (source.polled / source.error)
    slipway_builds_total{source,kind,result}        succeeded | failed
    slipway_builds_started_total{source,kind}
    slipway_builds_running
    slipway_build_duration_seconds{kind}            histogram
    slipway_retags_total{source}                    staging moved without a rebuild
    slipway_updates_total{deployment,result}        UpdateFinished (the update engine)
    slipway_rollout_progress_ratio{deployment}      RolloutProgress (done / total, the pod rollout)
    slipway_chart_applies_total{repo,chart,result}  ChartApplied (the chart watcher)
    slipway_rollout_step{deployment,state}, slipway_rollout_servers_updated{deployment}
                                                    active rollouts, from the store at scrape time
    slipway_approvals_pending{kind}                 computed from the store at scrape time
    slipway_source_last_poll_timestamp_seconds{source}, slipway_source_healthy{source}
    slipway_upstream_requests_total{upstream,status}   (poller/http.py)

Counters and the rollout gauge follow the typed events of :mod:`poller.events`, subscribed by
type (:meth:`Metrics.subscribe`); the producers publish, this module only listens.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from poller.events import (
    BuildFinished,
    BuildStarted,
    ChartApplied,
    EventBus,
    ImageRetagged,
    RolloutProgress,
    SourceError,
    SourcePolled,
    UpdateFinished,
)
from poller.logs import get_logger

log = get_logger(__name__)

#: Builds of game servers take from seconds (a re-tag-like rebuild) to an hour.
BUILD_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


class StoreCollector:
    """Gauges computed when scraped: pending approvals and each source's last poll."""

    def __init__(self) -> None:
        self.store = None

    def collect(self):
        store = self.store
        pending = GaugeMetricFamily("slipway_approvals_pending", "Approvals waiting for a person",
                                    labels=["kind"])
        last_poll = GaugeMetricFamily("slipway_source_last_poll_timestamp_seconds",
                                      "When each source was last polled (unix time)", labels=["source"])
        healthy = GaugeMetricFamily("slipway_source_healthy",
                                    "1 when the source's last poll succeeded", labels=["source"])
        if store is not None:
            try:
                from poller.approvals import ApprovalQueue

                kinds = _Tally(a.kind for a in ApprovalQueue(store).list())
                for kind, n in sorted(kinds.items()):
                    pending.add_metric([kind], n)
                for s in store.sources():
                    if s.get("last_poll"):
                        last_poll.add_metric([s["name"]], s["last_poll"])
                    healthy.add_metric([s["name"]], 0.0 if s.get("last_error") else 1.0)
            except Exception as exc:  # noqa: BLE001 - a scrape must never crash on a busy or missing store
                log.warning("metrics.store_unreadable", error=repr(exc))
        yield pending
        yield last_poll
        yield healthy
        yield from self._rollouts(store)

    @staticmethod
    def _rollouts(store):
        """Active rollouts from the rollout domain's store tables, when that domain is present."""
        step = GaugeMetricFamily("slipway_rollout_step", "Current step of each active rollout",
                                 labels=["deployment", "state"])
        servers = GaugeMetricFamily("slipway_rollout_servers_updated",
                                    "Servers already on the new version in each active rollout",
                                    labels=["deployment"])
        if store is not None:
            try:
                from poller.rollout.control import RolloutControl
            except ImportError:
                RolloutControl = None
            if RolloutControl is not None:
                try:
                    control = RolloutControl(store)
                    for r in control.active():
                        step.add_metric([r.deployment, r.state], r.step)
                        servers.add_metric([r.deployment], sum(
                            1 for s in control.servers(r.id) if s.get("updated_at")))
                except Exception as exc:  # noqa: BLE001 - a boundary: logged, never raised further
                    log.warning("metrics.rollouts_unreadable", error=repr(exc))
        yield step
        yield servers

    def describe(self):
        return []


class Metrics:
    """Every Slipway metric in one registry, and the pipeline listener that feeds them."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self.polls = Counter("slipway_polls_total", "Source polls, by source and result",
                             ["source", "result"], registry=registry)
        self.builds = Counter("slipway_builds_total", "Finished builds, by source, kind and result",
                              ["source", "kind", "result"], registry=registry)
        self.builds_started = Counter("slipway_builds_started_total", "Builds started",
                                      ["source", "kind"], registry=registry)
        self.running = Gauge("slipway_builds_running", "Builds running now", registry=registry)
        self.duration = Histogram("slipway_build_duration_seconds", "Build duration (build and push)",
                                  ["kind"], buckets=BUILD_BUCKETS, registry=registry)
        self.retags = Counter("slipway_retags_total", "Tags moved in the registry without a rebuild",
                              ["source"], registry=registry)
        self.updates = Counter("slipway_updates_total", "Deployment updates, by deployment and result",
                               ["deployment", "result"], registry=registry)
        self.rollout = Gauge("slipway_rollout_progress_ratio",
                             "Fraction of a rollout's targets done (0..1)", ["deployment"],
                             registry=registry)
        self.chart_applies = Counter("slipway_chart_applies_total",
                                     "Chart versions sent to the helm API, by repo, chart and result",
                                     ["repo", "chart", "result"], registry=registry)
        self.store_collector = StoreCollector()
        registry.register(self.store_collector)

    def bind_store(self, store) -> None:
        self.store_collector.store = store

    def subscribe(self, bus: EventBus) -> None:
        """Follow ``bus`` by event type."""
        bus.subscribe(BuildStarted, self.on_build_started)
        bus.subscribe(BuildFinished, self.on_build_finished)
        bus.subscribe(ImageRetagged, self.on_retagged)
        bus.subscribe(SourcePolled, self.on_polled)
        bus.subscribe(SourceError, self.on_source_error)
        bus.subscribe(UpdateFinished, self.on_update)
        bus.subscribe(RolloutProgress, self.on_rollout_progress)
        bus.subscribe(ChartApplied, self.on_chart_applied)

    def on_build_started(self, e: BuildStarted) -> None:
        self.builds_started.labels(e.source, e.kind).inc()
        self.running.inc()

    def on_build_finished(self, e: BuildFinished) -> None:
        self.builds.labels(e.source, e.kind, "succeeded" if e.ok else "failed").inc()
        self.running.dec()
        if e.duration is not None:
            self.duration.labels(e.kind).observe(float(e.duration))

    def on_retagged(self, e: ImageRetagged) -> None:
        self.retags.labels(e.source).inc()

    def on_polled(self, e: SourcePolled) -> None:
        self.polls.labels(e.source, "ok").inc()

    def on_source_error(self, e: SourceError) -> None:
        self.polls.labels(e.source, "error").inc()

    def on_update(self, e: UpdateFinished) -> None:
        self.updates.labels(e.deployment, "succeeded" if e.ok else "failed").inc()

    def on_rollout_progress(self, e: RolloutProgress) -> None:
        if e.total > 0:
            self.rollout.labels(e.deployment).set(min(1.0, e.done / e.total))

    def on_chart_applied(self, e: ChartApplied) -> None:
        self.chart_applies.labels(e.repo, e.chart, "succeeded" if e.ok else "failed").inc()


_DEFAULT: Metrics | None = None
_DEFAULT_LOCK = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide metrics on the default registry (created once)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Metrics(REGISTRY)
        return _DEFAULT


def install(bus: EventBus, store: Any = None) -> Metrics:
    """Feed the default metrics from ``bus``; scrape-time gauges read ``store``."""
    metrics = default_metrics()
    metrics.bind_store(store)
    metrics.subscribe(bus)
    return metrics
