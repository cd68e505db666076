"""The fleet's shared state in etcd, and the few atomic steps agents take on it.

Under the prefix ``P`` (``fleet.etcd.prefix``, default ``/dc``):

* ``P/current/<service>/<machine>``: the version that machine runs (leased: gone when the agent is).
* ``P/staging/<service>/<machine>``: the machine pulled the rollout's version and is ready (leased).
* ``P/deploy/<service>``: the queue of services being upgraded; the view orders it by dependencies.
* ``P/rollout/<service>``: the rollout itself: version, image, state (active, paused, aborted,
  failed, done) and an id.
* ``P/slots/<service>/<machine>``: a machine switching right now (under a lease of its own that
  covers a whole switch, so an agent stalled mid-switch keeps it and a dead agent's slot
  expires); ``P/guard/<service>`` is bumped by every taker so a slot is only taken by a
  transaction that saw the latest count: two machines can never both take the last slot.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from poller.errors import PermanentError
from poller.fleet.etcd import Compare, EtcdClient, delete_op, put_op
from poller.settings.fleet import FleetConfig, dependencies, order_services

ACTIVE, PAUSED, ABORTED, FAILED, DONE = "active", "paused", "aborted", "failed", "done"
MOVING = (ACTIVE, PAUSED)


class RolloutError(PermanentError):
    """A rollout request that cannot be carried out as asked."""


@dataclass
class Rollout:
    service: str
    version: str
    image: str
    state: str
    id: str
    started_at: float = 0.0
    detail: dict = field(default_factory=dict)
    mod_revision: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("mod_revision")
        return d


def _now() -> float:
    return time.time()


class FleetState:
    def __init__(self, client: EtcdClient, cfg: FleetConfig):
        self.etcd = client
        self.cfg = cfg
        self.prefix = cfg.etcd.prefix

    def key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    # -- views ----------------------------------------------------------------------
    def _by_service(self, area: str) -> dict[str, dict[str, dict]]:
        kvs, _ = self.etcd.range(self.key(area) + "/", prefix=True)
        out: dict[str, dict[str, dict]] = {}
        for kv in kvs:
            service, _, machine = kv.key[len(self.key(area)) + 1:].partition("/")
            if machine:
                out.setdefault(service, {})[machine] = kv.json() or {}
        return out

    def current(self) -> dict[str, dict[str, dict]]:
        """service -> machine -> {version, at}: the machines online and what they run."""
        return self._by_service("current")

    def staging(self) -> dict[str, dict[str, dict]]:
        """service -> machine -> {version, at}: the machines ready to switch."""
        return self._by_service("staging")

    def slots(self, service: str) -> list[str]:
        kvs, _ = self.etcd.range(self.key("slots", service) + "/", prefix=True)
        return [kv.key.rsplit("/", 1)[1] for kv in kvs]

    def rollouts(self) -> dict[str, Rollout]:
        kvs, _ = self.etcd.range(self.key("rollout") + "/", prefix=True)
        out = {}
        for kv in kvs:
            data = kv.json() or {}
            out[data["service"]] = Rollout(**data, mod_revision=kv.mod_revision)
        return out

    def rollout(self, service: str) -> Rollout | None:
        kv = self.etcd.get(self.key("rollout", service))
        return Rollout(**kv.json(), mod_revision=kv.mod_revision) if kv else None

    def deploy(self) -> list[dict]:
        """The deploy queue, dependencies first: [{service, version, state}]."""
        kvs, _ = self.etcd.range(self.key("deploy") + "/", prefix=True)
        queued = {kv.key.rsplit("/", 1)[1]: kv.json() or {} for kv in kvs}
        known = [s for s in order_services(self.cfg.services) if s in queued]
        rest = sorted(s for s in queued if s not in known)
        rollouts = self.rollouts()
        return [{"service": s, "version": queued[s].get("version"),
                 "state": rollouts[s].state if s in rollouts else None} for s in known + rest]

    def blocked_by(self, service: str) -> list[str]:
        """Dependencies of ``service`` still in the deploy queue (it waits for them)."""
        if service not in self.cfg.services:
            return []
        queued = {d["service"] for d in self.deploy()}
        return sorted(dependencies(self.cfg.services, service) & queued)

    def majority_version(self, service: str, *, exclude: str | None = None) -> str | None:
        """The version most machines online run (ties: the highest count first seen in name order)."""
        machines = self.current().get(service, {})
        counts = Counter(info.get("version") for m, info in sorted(machines.items())
                         if m != exclude and info.get("version"))
        return counts.most_common(1)[0][0] if counts else None

    # -- rollout control ------------------------------------------------------------
    def start_rollout(self, service: str, version: str, *, reason: str = "manual") -> Rollout:
        return self.start_rollouts({service: version}, reason=reason)[service]

    def start_rollouts(self, versions: dict[str, str], *, reason: str = "manual",
                       paused: bool = False) -> dict[str, Rollout]:
        """Queue several services in one transaction, so agents see the whole deploy queue at once.

        ``paused``: machines pre-pull and register as ready, but none switches until resumed."""
        started: dict[str, Rollout] = {}
        ops: list[dict] = []
        for service, version in versions.items():
            svc = self.cfg.services.get(service)
            if svc is None:
                raise RolloutError(f"no service named '{service}' in fleet.services")
            current = self.rollout(service)
            if current and current.state in MOVING and current.version == version:
                started[service] = current
                continue
            ro = Rollout(service=service, version=version, image=f"{svc.image}:{version}",
                         state=PAUSED if paused else ACTIVE,
                         id=uuid.uuid4().hex[:12], started_at=_now(), detail={"reason": reason})
            ops += [put_op(self.key("rollout", service), json.dumps(ro.as_dict())),
                    put_op(self.key("deploy", service), json.dumps({"version": version})),
                    delete_op(self.key("staging", service) + "/", prefix=True)]
            started[service] = ro
        if ops:
            self.etcd.txn([], ops)
        return started

    def _set_state(self, service: str, state: str, *, allowed: tuple[str, ...], **detail) -> Rollout:
        for _ in range(5):
            ro = self.rollout(service)
            if ro is None:
                raise RolloutError(f"no rollout of '{service}'")
            if ro.state not in allowed:
                raise RolloutError(f"the rollout of '{service}' is {ro.state}")
            ro.state = state
            ro.detail = {**ro.detail, **detail}
            ops = [put_op(self.key("rollout", service), json.dumps(ro.as_dict()))]
            if state in (ABORTED, DONE):
                ops += [delete_op(self.key("deploy", service)),
                        delete_op(self.key("staging", service) + "/", prefix=True)]
            if self.etcd.txn([Compare(self.key("rollout", service), "MOD", "EQUAL", ro.mod_revision)], ops):
                return ro
        raise RolloutError(f"the rollout of '{service}' kept changing; try again")

    def pause(self, service: str) -> Rollout:
        return self._set_state(service, PAUSED, allowed=(ACTIVE, PAUSED))

    def resume(self, service: str) -> Rollout:
        return self._set_state(service, ACTIVE, allowed=(ACTIVE, PAUSED))

    def abort(self, service: str) -> Rollout:
        return self._set_state(service, ABORTED, allowed=(ACTIVE, PAUSED, FAILED))

    def mark_failed(self, service: str, rollout_id: str, *, machine: str, reason: str) -> bool:
        ro = self.rollout(service)
        if ro is None or ro.id != rollout_id or ro.state not in MOVING:
            return False
        ro.state = FAILED
        ro.detail = {**ro.detail, "failed_on": machine, "error": reason, "failed_at": _now()}
        return self.etcd.txn([Compare(self.key("rollout", service), "MOD", "EQUAL", ro.mod_revision)],
                             [put_op(self.key("rollout", service), json.dumps(ro.as_dict()))])

    def finish_if_complete(self, service: str) -> bool:
        """Mark the rollout done when every machine online runs its version and none is switching."""
        ro = self.rollout(service)
        if ro is None or ro.state != ACTIVE:
            return False
        machines = self.current().get(service, {})
        if not machines or any(info.get("version") != ro.version for info in machines.values()):
            return False
        if self.slots(service):
            return False
        ro.state = DONE
        ro.detail = {**ro.detail, "finished_at": _now(), "machines": sorted(machines)}
        return self.etcd.txn([Compare(self.key("rollout", service), "MOD", "EQUAL", ro.mod_revision)],
                             [put_op(self.key("rollout", service), json.dumps(ro.as_dict())),
                              delete_op(self.key("deploy", service)),
                              delete_op(self.key("staging", service) + "/", prefix=True)])

    # -- per machine ----------------------------------------------------------------
    def register(self, area: str, service: str, machine: str, version: str, lease: int) -> None:
        self.etcd.put(self.key(area, service, machine),
                      json.dumps({"version": version, "at": _now()}), lease=lease)

    def unregister(self, area: str, service: str, machine: str) -> None:
        self.etcd.delete(self.key(area, service, machine))

    def take_slot(self, service: str, machine: str, lease: int) -> bool:
        """Atomically claim one of the service's ``max_unavailable`` switching slots for a
        machine's agent. Refused while the poller restarts that machine's server for a plugin
        change (holder ``<machine>.plugins``), checked in the same transaction. A slot the machine
        already holds is kept, under ``lease`` from now on."""
        if machine in self.slots(service):
            self.etcd.put(self.key("slots", service, machine),
                          json.dumps({"at": _now(), "holder": machine}), lease=lease)
            return True
        return self.take_named_slot(service, machine, lease, unless=(f"{machine}.plugins",))

    def release_slot(self, service: str, machine: str) -> None:
        self.etcd.delete(self.key("slots", service, machine))

    # -- the quorum slots as other holders see them (poller.artifacts.slots.QuorumSlots) ----------
    def quorum_services(self) -> Collection[str]:
        return self.cfg.services.keys()

    def hold_slot(self, service: str, holder: str, *, ttl: int, unless: tuple[str, ...] = ()) -> int | None:
        """:meth:`take_named_slot` under a lease of its own (``ttl`` seconds); the lease, or None
        when no slot is free."""
        lease = self.etcd.grant(ttl)
        if self.take_named_slot(service, holder, lease, unless=unless):
            return lease
        self.etcd.revoke(lease)
        return None

    def free_slot(self, service: str, holder: str, handle: int) -> None:
        self.release_slot(service, holder)
        self.etcd.revoke(handle)

    def take_named_slot(self, service: str, holder: str, lease: int, *, unless: tuple[str, ...] = ()) -> bool:
        """Like :meth:`take_slot`, for a holder that is not a machine's agent (e.g. the poller
        restarting a server for a plugin change: ``<machine>.plugins``).

        Same guard transaction, so it and the agents together never hold more than the service's
        ``max_unavailable`` slots. ``unless``: holders (e.g. the machine's own agent) whose slot
        must not exist, checked in the same transaction. A holder already present is *not*
        taken again: the caller must release what it took."""
        svc = self.cfg.services[service]
        guard = self.key("guard", service)
        guard_kv = self.etcd.get(guard)
        holders = self.slots(service)
        if holder in holders or any(u in holders for u in unless):
            return False
        if len(holders) >= svc.max_unavailable:
            return False
        if svc.min_available:
            up = len(self.current().get(service, {}))
            if up - len(holders) - 1 < svc.min_available:
                return False
        seen = guard_kv.mod_revision if guard_kv else 0
        count = int(guard_kv.value) + 1 if guard_kv and guard_kv.value.isdigit() else 1
        compares = [Compare(guard, "MOD", "EQUAL", seen)]
        compares += [Compare(self.key("slots", service, u), "CREATE", "EQUAL", 0) for u in unless]
        return self.etcd.txn(
            compares,
            [put_op(guard, str(count)),
             put_op(self.key("slots", service, holder), json.dumps({"at": _now(), "holder": holder}), lease)])
