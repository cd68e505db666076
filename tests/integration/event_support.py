"""Shared by the event tests (no tests here): ``poller run``'s subscribers on one bus."""

from __future__ import annotations

from poller.api import create_app
from poller.events import Event
from poller.runtime import Runtime


class Observed:
    """A runtime with ``poller run``'s subscribers on its bus (:meth:`Runtime.observe`), plus a
    recorder of every event. Producers taken from ``runtime`` publish on that bus."""

    def __init__(self, cfg, store):
        self.cfg, self.store = cfg, store
        self.runtime = Runtime(cfg, store=store)
        self.bus = self.runtime.bus
        self.events: list[Event] = []
        self.bus.subscribe(Event, self.events.append)
        self.runtime.observe()
        self.notifications = self.runtime.notifications

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def metric(self, line_start: str) -> float:
        """The value of the sample on ``/metrics`` (served by the API) starting with ``line_start``."""
        app = create_app(self.runtime)
        text = app.test_client().get("/metrics").get_data(as_text=True)
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
