"""``poller run``: start a fleet rollout when a newer release of a service's image is pushed.

With ``fleet.auto_rollout``, every ``fleet.interval`` seconds each service's repository is
listed; when its highest release tag is newer than the version of the service's last rollout
(or, before any rollout, than what most machines run), a rollout of that version starts.
The agents do the rest; this job never waits for them.
"""

from __future__ import annotations

from poller.events import EventBus, FleetRolloutStarted
from poller.versions import parse_version


def newest_release(tags: list[str]) -> str | None:
    releases = [(v, t) for t in tags if (v := parse_version(t)) is not None and not v.is_prerelease]
    return max(releases)[1] if releases else None


def check_for_releases(state, registry, store=None, bus: EventBus | None = None) -> dict[str, str]:
    """Start rollouts for services with a newer release; returns service -> version started."""
    started: dict[str, str] = {}
    rollouts = state.rollouts()
    for name, svc in state.cfg.services.items():
        repo = svc.image.split("/", 1)[1] if "/" in svc.image else svc.image
        newest = newest_release(registry.list_tags(repo))
        if newest is None:
            continue
        ro = rollouts.get(name)
        known = ro.version if ro is not None else state.majority_version(name)
        known_v = parse_version(known) if known else None
        newest_v = parse_version(newest)
        if known_v is not None and newest_v is not None and newest_v <= known_v:
            continue
        started[name] = newest
    if started:
        state.start_rollouts(started, reason="new image")
        for name, version in started.items():
            if store is not None:
                store.record_event("fleet.rollout", name, version=version, reason="new image")
            if bus is not None:
                bus.publish(FleetRolloutStarted(service=name, version=version, reason="new image"))
    return started


def jobs(cfg, fleet_state, registry, store, bus: EventBus | None = None) -> list:
    """``fleet_state()``: the runtime's fleet state, asked for only with ``fleet.auto_rollout``;
    ``registry``: the runtime's client of the build registry, where the services' images are."""
    if not cfg.fleet.auto_rollout or not cfg.fleet.services:
        return []
    state = fleet_state()
    return [("fleet:releases", cfg.fleet.interval, lambda: check_for_releases(state, registry, store, bus))]
