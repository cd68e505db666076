"""``poller run`` hook: one periodic job that checks every tracked image and deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def jobs(cfg, engine: Callable[[], Any]) -> list:
    """``engine``: the runtime's update engine, asked for only when deployments are configured."""
    if not cfg.updates.deployments:
        return []
    cycle = engine().cycle
    # never waits for a rollout: health is judged from the cache on later cycles
    return [("updates", cfg.updates.interval, lambda: cycle(settle=False))]
