"""The per-machine agent: everything a machine needs to take part in a rollout on its own.

Each pass, for every service this machine runs (level-triggered, so a missed watch event, an
etcd outage or an agent restart only delays it):

1. publish what it runs under ``current`` (leased);
2. when it (re)joins the fleet and no rollout is moving its service, start the version most
   of its peers run;
3. during an active rollout it waits for the service's dependencies to leave the deploy queue,
   pre-pulls the image, registers under ``staging``, takes a slot by transaction, switches
   its container, checks health, registers the new version and frees the slot. A failed health
   check rolls its own container back and marks the rollout failed, which stops the others; the
   slot is freed once the old version is healthy again.

Between passes it watches the prefix, so a new rollout is seen at once. One lease carries the
machine's presence (``current``, ``staging``), refreshed from a thread; when it expired (etcd
unreachable, or the agent starved of CPU, for longer than its TTL) the agent takes a new one and
counts as rejoining. A slot has a lease of its own, refreshed by the same thread, whose TTL
covers a whole switch (stop, start, health check, rollback): an agent that stalls mid-switch
still holds its slot, so no other machine goes down meanwhile; a dead agent's slot still
expires, that much later.
"""

from __future__ import annotations

import math
import threading
import time

from poller.errors import SlipwayError
from poller.fleet.containers import ServiceContainer
from poller.fleet.state import ACTIVE, MOVING, FleetState
from poller.logs import get_logger
from poller.settings.fleet import FleetConfig

log = get_logger("poller.fleet.agent")


class Agent:
    def __init__(self, cfg: FleetConfig, state: FleetState, containers: dict[str, ServiceContainer],
                 *, stop: threading.Event | None = None):
        if cfg.agent is None:
            raise SlipwayError("fleet.agent is not configured for this machine")
        self.cfg = cfg
        self.agent = cfg.agent
        self.machine = cfg.agent.machine
        self.state = state
        self.containers = containers
        self.stop = stop or threading.Event()
        self.lease = 0
        self._lease_lost = threading.Event()
        self._rejoin = set(containers)
        self._published: dict[str, str | None] = {}
        # a slot a previous run of this agent left (killed mid-switch) is freed on the first pass
        self._stale_slots: set[str] = set(containers)
        self._slot_leases: dict[str, int] = {}  # service -> the lease of the slot held right now

    # -- lease ----------------------------------------------------------------------
    def _ensure_lease(self) -> None:
        if self.lease and not self._lease_lost.is_set():
            return
        self.lease = self.state.etcd.grant(self.agent.lease_ttl)
        self._lease_lost.clear()
        self._rejoin = set(self.containers)
        self._published.clear()
        log.info("agent.joined", machine=self.machine, lease=self.lease)

    def _keepalive_loop(self) -> None:
        period = max(0.5, self.agent.lease_ttl / 3)
        while not self.stop.wait(period):
            for service, slot_lease in list(self._slot_leases.items()):
                try:
                    if self.state.etcd.keepalive(slot_lease) <= 0:
                        log.error("agent.slot_lease_expired", machine=self.machine, service=service)
                except SlipwayError:
                    pass  # told below, once per period
            lease = self.lease
            if not lease or self._lease_lost.is_set():
                continue
            try:
                if self.state.etcd.keepalive(lease) <= 0:
                    log.warning("agent.lease_expired", machine=self.machine)
                    self._lease_lost.set()
            except SlipwayError as exc:
                log.warning("agent.etcd_unreachable", machine=self.machine, error=str(exc))

    def slot_ttl(self, service: str) -> int:
        """Seconds a slot outlives a silent agent: the longest a switch can take (stop, health
        check of the new version, rollback and health check of the old one) plus the agent's TTL."""
        svc = self.cfg.services[service]
        return math.ceil(self.agent.lease_ttl + svc.stop_timeout + 2 * svc.health.timeout)

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self._keepalive_loop, name="lease", daemon=True).start()
        revision = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self._ensure_lease()
                for service in self.containers:
                    self.step(service)
                _, revision = self.state.etcd.range(self.state.key("rollout"))
            except SlipwayError as exc:
                log.warning("agent.step_failed", machine=self.machine, error=str(exc))
                self.stop.wait(self.agent.interval)  # etcd is away: look again later
                continue
            except Exception as exc:  # the Docker engine failing must not end the agent
                log.error("agent.step_failed", machine=self.machine, error=repr(exc), exc_info=True)
                self.stop.wait(self.agent.interval)
                continue
            self.state.etcd.wait_for_change(self.state.prefix + "/", revision, self.agent.interval)
            # a watch that fails answers at once: never spin faster than a tenth of the interval
            self.stop.wait(max(0.0, self.agent.interval / 10 - (time.monotonic() - started)))
        try:
            if self.lease:
                self.state.etcd.revoke(self.lease)
        except SlipwayError:
            pass

    def _publish(self, service: str, version: str | None) -> None:
        if version is None:
            self.state.unregister("current", service, self.machine)
        elif self._published.get(service) != version:
            self.state.register("current", service, self.machine, version, self.lease)
        self._published[service] = version

    def step(self, service: str) -> None:
        container = self.containers[service]
        container.recover()  # a switch cut short (agent killed, engine error) is undone first
        if service in self._stale_slots:  # a release etcd did not take (it was down), or a slot
            self.state.release_slot(service, self.machine)  # a killed run of this agent left
            self._stale_slots.discard(service)
        if not container.exists():  # nothing to switch: this machine does not run it (yet)
            self._publish(service, None)
            return
        running = container.version()
        self._publish(service, running)
        ro = self.state.rollout(service)
        moving = ro is not None and ro.state in MOVING and ro.version != running
        if service in self._rejoin:
            if not moving:
                wanted = self.state.majority_version(service, exclude=self.machine)
                if wanted and wanted != running:
                    log.info("agent.rejoin_majority", machine=self.machine, service=service,
                             running=running, majority=wanted)
                    if self._switch(service, wanted, rollout_id=None) is None:
                        return  # no free slot yet: try again next pass
            self._rejoin.discard(service)
            return
        if ro is None or not moving:
            if ro is not None and ro.state == ACTIVE and ro.version == running:
                self.state.unregister("staging", service, self.machine)
                self.state.finish_if_complete(service)
            return
        blockers = self.state.blocked_by(service)
        if blockers:
            return
        container.pull(ro.version)
        self.state.register("staging", service, self.machine, ro.version, self.lease)
        if ro.state != ACTIVE:
            return
        self._switch(service, ro.version, rollout_id=ro.id)

    def _switch(self, service: str, version: str, *, rollout_id: str | None) -> bool | None:
        """Switch under a slot: True healthy, False rolled back, None when it did not start."""
        container = self.containers[service]
        container.pull(version)
        holders = self.state.slots(service)
        if self.machine not in holders and (len(holders) >= self.cfg.services[service].max_unavailable
                                            or f"{self.machine}.plugins" in holders):
            return None  # no free slot: not worth a lease
        slot_lease = self.state.etcd.grant(self.slot_ttl(service))
        if not self.state.take_slot(service, self.machine, slot_lease):
            self._revoke(slot_lease)
            return None
        self._slot_leases[service] = slot_lease
        try:
            if rollout_id is not None:
                ro = self.state.rollout(service)
                if ro is None or ro.id != rollout_id or ro.state != ACTIVE:
                    return None
            before = container.version()
            log.info("agent.switching", machine=self.machine, service=service, version=version)
            ok, reason = container.switch(version)
            if ok:
                log.info("agent.switched", machine=self.machine, service=service, version=version)
            else:
                log.error("agent.switch_failed", machine=self.machine, service=service,
                          version=version, kept=before, reason=reason)
                if rollout_id is not None:  # first: publishing fails when the presence lease expired
                    self.state.mark_failed(service, rollout_id, machine=self.machine, reason=reason)
            self._publish(service, container.version())
            self.state.unregister("staging", service, self.machine)
            return ok
        finally:
            self._slot_leases.pop(service, None)  # no longer refreshed: it expires if etcd is away
            self._stale_slots.add(service)
            self.state.release_slot(service, self.machine)
            self._stale_slots.discard(service)
            self._revoke(slot_lease)
            if rollout_id is not None:
                self.state.finish_if_complete(service)

    def _revoke(self, lease: int) -> None:
        try:
            self.state.etcd.revoke(lease)
        except SlipwayError as exc:  # it expires on its own
            log.warning("agent.revoke_failed", machine=self.machine, lease=lease, error=str(exc))
