"""Wire an :class:`~poller.fleet.agent.Agent` for this machine from its configuration."""

from __future__ import annotations

import threading

import docker

from poller.fleet import open_state
from poller.fleet.agent import Agent
from poller.fleet.containers import ServiceContainer
from poller.fleet.settings import FleetConfig


def build_agent(cfg: FleetConfig, *, docker_url: str | None, stop: threading.Event) -> Agent:
    assert cfg.agent is not None
    url = cfg.agent.docker_url or docker_url
    client = docker.DockerClient(base_url=url, timeout=120) if url else docker.from_env(timeout=120)
    containers = {svc: ServiceContainer(client, name, cfg.services[svc].image, cfg.services[svc].health,
                                        stop=stop, stop_timeout=cfg.services[svc].stop_timeout)
                  for svc, name in cfg.agent.containers.items()}
    return Agent(cfg, open_state(cfg), containers, stop=stop)
