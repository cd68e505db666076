"""One back-off formula for sources, builds and watched images (poller.http.backoff_delay)."""

from __future__ import annotations

from poller.http import backoff_delay
from poller.pipeline import Backoff


def test_doubles_from_initial_and_stops_at_the_maximum():
    assert [backoff_delay(n, initial=5, maximum=60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff_delay(10_000, initial=5, maximum=60) == 60   # no overflow after a long outage


def test_retry_after_lengthens_the_wait_but_never_past_the_maximum():
    assert backoff_delay(1, initial=5, maximum=900, retry_after=30) == 30
    assert backoff_delay(4, initial=5, maximum=900, retry_after=1) == 40
    assert backoff_delay(1, initial=5, maximum=900, retry_after=10 ** 9) == 900


def test_a_source_answering_an_absurd_retry_after_is_polled_again_within_the_maximum():
    now = [0.0]
    backoff = Backoff(initial=5, maximum=900, clock=lambda: now[0])
    assert backoff.failed("source:gs", retry_after=10 ** 9) == 900
    assert backoff.wait_left("source:gs") == 900
    now[0] = 900.0
    assert backoff.wait_left("source:gs") == 0
