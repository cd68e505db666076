"""``poller run`` hook: one periodic job that checks every tracked image and deployment."""

from __future__ import annotations


def jobs(cfg, store, bus=None) -> list:
    if not cfg.updates.deployments:
        return []
    from poller.updater.build import build_engine

    engine = build_engine(cfg, store, bus=bus)
    return [("updates", cfg.updates.interval, engine.cycle)]
