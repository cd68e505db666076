"""``poller run``: one plugin cycle per environment every ``plugins.interval`` seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def jobs(cfg, store, rollout_for: Callable[[str], Any]) -> list:
    """``rollout_for(env)``: the runtime's plugin rollout serving ``env``. Cycles report in the
    store's events."""
    if not cfg.plugins.server_types or not cfg.plugins.environments:
        return []
    from poller.logs import get_logger

    log = get_logger("poller.artifacts")

    def make(env: str, runner):
        def run() -> dict:
            report = runner.cycle(env).as_dict()
            if report["restarted"] or report["errors"] or report["draining"]:
                store.record_event("plugins.cycle", env, **report)
                log.info("plugins.cycle", env=env, restarted=len(report["restarted"]),
                         draining=len(report["draining"]), errors=len(report["errors"]))
            return report
        return run

    # Docker environments first, then Kubernetes ones (the order jobs are scheduled in)
    envs = sorted(cfg.plugins.environments.items(), key=lambda item: bool(item[1].kubernetes_namespace))
    return [(f"plugins:{env}", cfg.plugins.interval, make(env, rollout_for(env))) for env, _ in envs]
