"""Restart the servers that run an outdated plugin, with the fleet's rules.

One :meth:`PluginRollout.cycle` per environment:

* the channel tags are moved to what each server type must run (:mod:`~poller.artifacts.channels`);
* server types go in dependency order: a type waits while a type it depends on still has
  outdated servers;
* at most ``max_unavailable`` servers of a type are down at once (servers already down count);
* a server with players is never restarted: it is asked to drain (``drain_command``) and is
  restarted in a later pass, once it reports no players; idle outdated servers go first;
* a restarted server must report the new plugin set (and be healthy, when its image has a
  HEALTHCHECK) within ``restart_timeout``, else the type stops for this cycle (the rest keeps
  the old plugins) and the error is reported;
* with a fleet (``fleet.services`` holds the type's ``fleet_service``, default the service of the
  same name), every restart also holds one of that service's quorum slots (``fleet``, a
  :class:`~poller.artifacts.slots.QuorumSlots`: the fleet's etcd slots, taken with the agents'
  guard transaction under a lease, holder ``<machine>.plugins``), and never while that
  machine's agent holds its slot;
  so plugin restarts and image switches of the same service together never exceed its
  ``max_unavailable``. No free slot: the server waits for a later cycle.

Up-to-date servers are never touched.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from poller.artifacts.channels import sync_channels
from poller.artifacts.servers import Server, find_servers
from poller.artifacts.slots import QuorumSlots
from poller.artifacts.store import ArtifactStore
from poller.logs import get_logger
from poller.settings.plugins import PluginsConfig, type_order

log = get_logger("poller.artifacts")


@dataclass
class CycleReport:
    env: str
    restarted: list[str] = field(default_factory=list)
    draining: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # types held back by their dependencies
    #: types whose channel did not move: a plugin of their set has no matching release yet
    incomplete: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class PluginRollout:
    def __init__(self, cfg: PluginsConfig, store: ArtifactStore, docker_client, *,
                 stop: threading.Event | None = None, fleet: QuorumSlots | None = None):
        self.cfg = cfg
        self.store = store
        self.docker = docker_client
        self.stop = stop or threading.Event()
        self.fleet = fleet  # the fleet's quorum slots, when the servers' machines run fleet agents

    def fleet_service(self, type_name: str) -> str | None:
        """The fleet service whose quorum slots a restart of this type takes (None: no fleet)."""
        if self.fleet is None:
            return None
        name = self.cfg.server_types[type_name].fleet_service or type_name
        return name if name in self.fleet.quorum_services() else None

    def _take_slot(self, service: str, server: Server) -> int | None:
        """A handle on ``service``'s slot held for ``server``, or None when no slot is free."""
        assert self.fleet is not None   # only called when fleet_service() named a service
        ttl = math.ceil(self.cfg.probe.stop_timeout + self.cfg.probe.restart_timeout) + 10
        return self.fleet.hold_slot(service, f"{server.machine}.plugins", ttl=ttl, unless=(server.machine,))

    def _release_slot(self, service: str, server: Server, handle: int) -> None:
        assert self.fleet is not None
        self.fleet.free_slot(service, f"{server.machine}.plugins", handle)

    def cycle(self, env: str) -> CycleReport:
        report = CycleReport(env)
        wanted = {t: {p: a.digest for p, a in plugins.items()}
                  for t, plugins in sync_channels(self.store, self.cfg, env, report.incomplete).items()}
        servers = find_servers(self.docker, self.cfg.probe, env)
        pending: set[str] = set()
        for type_name in type_order(self.cfg):
            if type_name not in wanted:   # incomplete: its servers keep what they run
                continue
            members = servers.get(type_name, [])
            outdated = [s for s in members if self._outdated(s, wanted[type_name])]
            report.up_to_date += [s.name for s in members if s not in outdated]
            if not outdated:
                continue
            pending.add(type_name)
            blockers = [d for d in self.cfg.server_types[type_name].depends_on if d in pending]
            if blockers:
                report.waiting.append(type_name)
                continue
            if self._roll_type(type_name, members, outdated, wanted[type_name], report):
                pending.discard(type_name)
        return report

    @staticmethod
    def _outdated(server: Server, wanted: dict[str, str]) -> bool:
        reported = server.report()
        return reported is None or any(reported.get(p) != d for p, d in wanted.items())

    def _roll_type(self, type_name: str, members: list[Server], outdated: list[Server],
                   wanted: dict[str, str], report: CycleReport) -> bool:
        """Restart what may be restarted now; True when the whole type is up to date."""
        limit = self.cfg.server_types[type_name].max_unavailable
        todo = list(outdated)
        while todo and not self.stop.is_set():
            down = sum(1 for s in members if s not in todo and s.report() is None)
            idle = [s for s in todo if not s.busy()]
            for s in todo:
                if s not in idle and s.name not in report.draining:
                    s.run(self.cfg.probe.drain_command)
                    report.draining.append(s.name)
                    log.info("plugins.draining", server=s.name, server_type=type_name)
            batch = idle[:max(0, limit - down)]
            service = self.fleet_service(type_name)
            leases: dict[str, int] = {}
            if service is not None:
                for s in list(batch):
                    lease = self._take_slot(service, s)
                    if lease is None:  # the fleet's slots are taken (an image rollout): later
                        batch = batch[:batch.index(s)]
                        break
                    leases[s.name] = lease
            if not batch:
                if service is not None and idle and type_name not in report.waiting:
                    report.waiting.append(type_name)
                return False  # busy ones drain; the next cycle restarts them
            try:
                for s in batch:
                    log.info("plugins.restarting", server=s.name, server_type=type_name)
                    s.restart()
                for s in batch:
                    if not self._wait_current(s, wanted):
                        report.errors.append(f"{s.name}: did not report the new plugins within "
                                             f"{self.cfg.probe.restart_timeout:g}s")
                        return False
                    s.run(self.cfg.probe.undrain_command)
                    report.restarted.append(s.name)
                    todo.remove(s)
                    if s.name in report.draining:
                        report.draining.remove(s.name)
            finally:
                for s in batch:
                    if s.name in leases:
                        self._release_slot(service, s, leases[s.name])  # type: ignore[arg-type]
        return not todo

    def _wait_current(self, server: Server, wanted: dict[str, str]) -> bool:
        deadline = time.monotonic() + self.cfg.probe.restart_timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            if not self._outdated(server, wanted) and server.healthy():
                return True
            self.stop.wait(0.2)
        return False
