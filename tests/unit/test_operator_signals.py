"""Metrics, terminal progress, correlation ids and notifications, fed the pipeline's events."""

from __future__ import annotations

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest

from poller.approvals import ApprovalQueue
from poller.commands.progress import ProgressDisplay
from poller.config import parse_config
from poller.events import (BuildFinished, BuildStarted, EventBus, ImageRetagged, RolloutProgress, RolloutStopped,
                           SourceError, SourcePolled, UpdateFinished, subscribe_log_correlation)
from poller.logs import CORRELATION_ID, correlation, get_logger, setup_logging
from poller.metrics import Metrics
from poller.store import Store


def test_metrics_follow_build_events_and_read_approvals_at_scrape_time(tmp_path):
    reg = CollectorRegistry()
    m = Metrics(reg)
    store = Store(tmp_path / "s.db")
    m.bind_store(store)
    bus = EventBus()
    m.subscribe(bus)
    build = {"source": "gs", "image": "r:5000/gs", "ref": "tag:v1", "sha": "a" * 40}
    bus.publish(BuildStarted(build_id=1, kind="release", **build))
    bus.publish(BuildFinished(build_id=1, kind="release", ok=True, duration=42.0, **build))
    bus.publish(BuildStarted(build_id=2, kind="staging", **build))
    bus.publish(BuildFinished(build_id=2, kind="staging", ok=False, duration=3.0, **build))
    bus.publish(SourceError(source="gs", error="boom"))
    bus.publish(SourcePolled(source="gs"))
    bus.publish(ImageRetagged(source="gs", image="r:5000/gs", tag="staging", digest="sha256:1", sha="a" * 40))
    bus.publish(UpdateFinished(deployment="prod", image="r:5000/gs", ok=True, to_ref="1.2.0"))
    bus.publish(RolloutProgress(deployment="prod", to_ref="1.2.0", done=3, total=4))
    store.record_poll("gs", head="a" * 40, tags={})
    ApprovalQueue(store).request(kind="chart", subject="game", to_version="2.0.0")
    from poller.rollout.control import RolloutControl

    control = RolloutControl(store)
    rollout = control.start("prod", "1.2.0", "r:5000/gs")
    control.server_updated(rollout.id, "gs-1", 1)
    text = generate_latest(reg).decode()
    for line in ('slipway_builds_total{kind="release",result="succeeded",source="gs"} 1.0',
                 'slipway_builds_total{kind="staging",result="failed",source="gs"} 1.0',
                 "slipway_builds_running 0.0",
                 'slipway_build_duration_seconds_bucket{kind="release",le="60.0"} 1.0',
                 'slipway_polls_total{result="error",source="gs"} 1.0',
                 'slipway_polls_total{result="ok",source="gs"} 1.0',
                 'slipway_retags_total{source="gs"} 1.0',
                 'slipway_updates_total{deployment="prod",result="succeeded"} 1.0',
                 'slipway_rollout_progress_ratio{deployment="prod"} 0.75',
                 'slipway_approvals_pending{kind="chart"} 1.0',
                 'slipway_source_healthy{source="gs"} 1.0',
                 'slipway_rollout_servers_updated{deployment="prod"} 1.0'):
        assert line in text, line
    ApprovalQueue(store).approve(1)
    assert 'slipway_approvals_pending{kind="chart"}' not in generate_latest(reg).decode()


class _Plan:
    source, ref, tags = "gs", "tag:v1.4.0", ["1.4.0"]


BUILD_LOG = ("--> fetching abc\n", "Step 1/3 : FROM scratch\n ---> \nStep 2/3 : COPY a /a\n",
             " ---> 1234\nStep 3/3 : CMD x\n", "--> pushing r:5000/gs:1.4.0\n", "--> pushed r:5000/gs@sha256:1\n")


def test_progress_off_a_terminal_is_one_structured_event_per_step():
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    try:
        display = ProgressDisplay(io.StringIO(), tty=False)
        for chunk in BUILD_LOG:
            display(_Plan(), chunk)
    finally:
        setup_logging(fmt="text", stream=io.StringIO())
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e.get("step") or e["phase"] for e in events] == ["fetching", "1/3", "2/3", "3/3", "pushing", "pushed"]
    assert events[1]["detail"] == "FROM scratch" and events[4]["push"] == "1/1"


def test_progress_on_a_terminal_keeps_one_status_line_below_the_logs():
    term = io.StringIO()
    display = ProgressDisplay(term, tty=True, width=80)
    display(_Plan(), BUILD_LOG[0] + BUILD_LOG[1])
    assert display.status_line() == "gs tag:v1.4.0 step 2/3"
    display.write("12:00:00 info    something.happened\n")
    display.on_finished(BuildFinished(build_id=1, source="gs", image="r:5000/gs", ref="tag:v1.4.0",
                                      kind="release", sha="a" * 40, ok=True, duration=12.5))
    screen = term.getvalue()
    # The log line cleared the status line, was written whole, and the status came back after it.
    assert "\r\x1b[K12:00:00 info    something.happened\ngs tag:v1.4.0 step 2/3" in screen
    assert screen.endswith("[gs tag:v1.4.0] done in 12.5s\n")
    assert display.status_line() == ""


def test_correlation_id_tags_every_line_of_a_build_thread():
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    log = get_logger("poller.test")
    seen = []
    bus = EventBus()
    subscribe_log_correlation(bus)
    build = {"build_id": 7, "source": "gs", "image": "r:5000/gs", "ref": "tag:v1", "kind": "release",
             "sha": "a" * 40}

    def build_thread():
        bus.publish(BuildStarted(**build))
        log.info("registry.push", tag="1.0.0")
        logging.getLogger("docker.other").warning("plain stdlib line")
        bus.publish(BuildFinished(ok=True, **build))
        log.info("after")
        seen.append(CORRELATION_ID.get())

    try:
        t = threading.Thread(target=build_thread)
        t.start()
        t.join(10)
        with correlation("rollout-prod"):
            log.info("rollout.step")
        log.info("outside")
    finally:
        setup_logging(fmt="text", stream=io.StringIO())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("cid") for line in lines] == ["build-7", "build-7", None, "rollout-prod", None]
    assert seen == [None]


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notifications_reach_a_real_webhook(tmp_path):
    from poller.notify import subscribe_notifications

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.bodies = []
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{sink.server_address[1]}/x"
        cfg = parse_config({"registry": {"url": "r:5000"}, "notify": {"webhooks": [
            {"url": url, "format": "json"},
            {"url": url + "/slack", "format": "slack", "events": ["build.failed"]}]}}, env={})
        store = Store(tmp_path / "s.db")
        bus = EventBus()
        announce = subscribe_notifications(cfg.notify, store, bus).announce
        bus.publish(BuildFinished(build_id=3, source="gs", ref="branch:master", sha="f" * 40, kind="staging",
                                  image="r:5000/gs", ok=False, error="Step 2/3: COPY failed"))
        bus.publish(BuildFinished(build_id=4, source="gs", ref="branch:master", kind="staging", sha="e" * 40,
                                  image="r:5000/gs", ok=True, tags=("staging",)))
        bus.publish(BuildFinished(build_id=5, source="gs", ref="tag:v1.0.0", kind="release", sha="d" * 40,
                                  image="r:5000/gs", ok=True, tags=("1.0.0",), digest="sha256:1"))
        bus.publish(RolloutStopped(deployment="prod", to_ref="1.9.0", state="failed",
                                   message="health check failed"))
        ApprovalQueue(store).request(kind="deployment", subject="prod", to_version="2.0.0")
        from poller.rollout.control import RolloutControl

        control = RolloutControl(store)
        rollout = control.start("prod", "2.0.0", "r:5000/gs")
        control.set_state(rollout.id, "failed", message="gs-2 did not come back")
        assert announce() == 2 and announce() == 0
    finally:
        sink.shutdown()
    events = [b.get("event") or b["text"] for b in sink.bodies]
    assert events[0] == "build.failed" and ":x:" in events[1]          # json, then slack
    assert events[2:] == ["release.deployed", "rollout.stopped", "approval.requested", "rollout.stopped"]
    assert sink.bodies[-1]["state"] == "failed" and sink.bodies[-1]["message"] == "gs-2 did not come back"
    assert sink.bodies[0]["error"] == "Step 2/3: COPY failed" and sink.bodies[2]["tags"] == "1.0.0"
