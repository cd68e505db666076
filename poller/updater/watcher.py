"""One watcher per image (not per deployment).

Each cycle a watcher asks the registry only what its deployments need: one ``HEAD`` per
mutable tag followed by digest, and the tag list (paginated) when any deployment follows
versions or patterns. A failing registry (429/5xx, connection errors) makes the watcher
back off (``Retry-After`` when given, else doubling up to ``backoff_max``) and report no
offer at all, so a failure is never mistaken for "nothing new" nor for "something new".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from poller.errors import SlipwayError, UpstreamError
from poller.http import backoff_delay
from poller.logs import get_logger
from poller.policy.base import Offer
from poller.registry.client import RegistryClient
from poller.updater.history import UpdateHistory

log = get_logger(__name__)


@dataclass(frozen=True)
class Observation:
    image: str
    offer: Offer | None        # None: the registry could not be read this cycle
    error: str | None = None


class ImageWatcher:
    def __init__(self, image: str, client: RegistryClient, history: UpdateHistory, *,
                 backoff_initial: float = 5.0, backoff_max: float = 900.0, page_size: int = 200,
                 clock: Callable[[], float] = time.time):
        self.image = image
        self.repository = image.split("/", 1)[1]
        self.client = client
        self.history = history
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self.page_size = page_size
        self.mutable_tags: set[str] = set()
        self.lists_tags = False

    def want(self, *, mutable_tags: tuple[str, ...] = (), lists_tags: bool = False) -> None:
        self.mutable_tags.update(mutable_tags)
        self.lists_tags = self.lists_tags or lists_tags

    def backing_off(self, retry_at: float | None | bool = False) -> float | None:
        """When this watcher may ask the registry again, if it is backing off. ``retry_at``: the
        stored ``retry_at`` already read for the whole cycle (``False``: read it here)."""
        if retry_at is False:
            state = self.history.watcher_state(self.image)
            retry_at = state.get("retry_at") if state else None
        if retry_at and retry_at > self.clock():
            return float(retry_at)
        return None

    def observe(self, *, retry_at: float | None | bool = False, record: bool = True) -> Observation:
        """One check. ``retry_at``: see :meth:`backing_off`; ``record=False``: a success is not
        written here, the caller records the cycle's successes at once
        (:meth:`UpdateHistory.watched_ok` with :meth:`checked`); failures are always written."""
        retry_at = self.backing_off(retry_at)
        if retry_at is not None:
            return Observation(self.image, None, f"backing off until {retry_at:.0f}")
        try:
            tags = tuple(self.client.list_tags(self.repository, page_size=self.page_size)) if self.lists_tags else ()
            digests = {}
            for tag in sorted(self.mutable_tags):
                digest = self.client.head_manifest(self.repository, tag)
                if digest:
                    digests[tag] = digest
        except (UpstreamError, SlipwayError) as exc:
            failures = self.history.watched(self.image, ok=False, error=str(exc))
            delay = backoff_delay(failures, initial=self.backoff_initial, maximum=self.backoff_max,
                                  retry_after=exc.retry_after if isinstance(exc, UpstreamError) else None)
            self.history.set_retry(self.image, self.clock() + delay)
            log.warning("watch.failed", image=self.image, error=str(exc), failures=failures,
                        retry_in=round(delay, 1))
            return Observation(self.image, None, str(exc))
        obs = Observation(self.image, Offer(tags=tags, digests=tuple(sorted(digests.items()))))
        if record:
            self.history.watched_ok([self.checked(obs)])
        return obs

    def checked(self, obs: Observation) -> tuple[str, int | None, dict]:
        """What :meth:`UpdateHistory.watched_ok` records of a successful observation."""
        assert obs.offer is not None
        return (self.image, len(obs.offer.tags) if self.lists_tags else None, dict(obs.offer.digests))
