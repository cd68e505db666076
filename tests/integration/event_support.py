"""Shared by the event tests (no tests here): ``poller run``'s subscribers on one bus."""

from __future__ import annotations

from poller.api import create_app
from poller.events import Event, EventBus
from poller.metrics import install as install_metrics
from poller.notify import subscribe_notifications
from poller.runtime import Runtime


class Observed:
    """``poller run``'s subscribers on one bus, plus a recorder of every event."""

    def __init__(self, cfg, store):
        self.cfg, self.store = cfg, store
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe(Event, self.events.append)
        install_metrics(self.bus, store)
        self.notifications = subscribe_notifications(cfg.notify, store, self.bus)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def metric(self, line_start: str) -> float:
        """The value of the sample on ``/metrics`` (served by the API) starting with ``line_start``."""
        app = create_app(Runtime(config=self.cfg, store=self.store))
        text = app.test_client().get("/metrics").get_data(as_text=True)
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
