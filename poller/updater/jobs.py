"""``poller run`` hook: one periodic job that checks every tracked image and deployment."""

from __future__ import annotations

from functools import partial


def jobs(cfg, store, bus=None) -> list:
    if not cfg.updates.deployments:
        return []
    from poller.updater.build import build_engine

    engine = build_engine(cfg, store, bus=bus)
    # never waits for a rollout: health is judged from the cache on later cycles
    return [("updates", cfg.updates.interval, partial(engine.cycle, settle=False))]
