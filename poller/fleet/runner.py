"""Wire an :class:`~poller.fleet.agent.Agent` for this machine from its configuration."""

from __future__ import annotations

import threading
from typing import Any

from poller.fleet.agent import Agent
from poller.fleet.containers import ServiceContainer
from poller.fleet.state import FleetState
from poller.settings.fleet import FleetConfig


def build_agent(cfg: FleetConfig, state: FleetState, client: Any, *, stop: threading.Event) -> Agent:
    """``client``: a Docker client of this machine's engine (``fleet.agent.docker_url``, else
    ``docker.base_url``; the runtime picks it)."""
    assert cfg.agent is not None
    containers = {svc: ServiceContainer(client, name, cfg.services[svc].image, cfg.services[svc].health,
                                        stop=stop, stop_timeout=cfg.services[svc].stop_timeout)
                  for svc, name in cfg.agent.containers.items()}
    return Agent(cfg, state, containers, stop=stop)
