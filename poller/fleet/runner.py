"""Wire an :class:`~poller.fleet.agent.Agent` for this machine from its configuration."""

from __future__ import annotations

import threading

from poller.docker_engine import client_factory
from poller.fleet import open_state
from poller.fleet.agent import Agent
from poller.fleet.containers import ServiceContainer
from poller.settings.fleet import FleetConfig


def build_agent(cfg: FleetConfig, *, docker_url: str | None, stop: threading.Event) -> Agent:
    """``docker_url``: the top-level ``docker.base_url`` (``fleet.agent.docker_url`` wins over it)."""
    assert cfg.agent is not None
    client = client_factory(cfg.agent.docker_url, docker_url)()
    containers = {svc: ServiceContainer(client, name, cfg.services[svc].image, cfg.services[svc].health,
                                        stop=stop, stop_timeout=cfg.services[svc].stop_timeout)
                  for svc, name in cfg.agent.containers.items()}
    return Agent(cfg, open_state(cfg), containers, stop=stop)
