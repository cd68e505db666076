"""Compose the updater from the whole config: registry clients (one per registry, shared by
that registry's watchers, so its request limit holds), one watcher per image, targets."""

from __future__ import annotations

import time
from collections.abc import Callable

from poller.config import Config, RegistryConfig
from poller.events import EventBus
from poller.http import RequestCounter
from poller.registry.client import RegistryClient
from poller.updater.engine import UpdateEngine
from poller.updater.history import UpdateHistory
from poller.updater.target_factory import TargetFactory
from poller.updater.watcher import ImageWatcher


def registry_config(cfg: Config, host: str) -> RegistryConfig:
    if cfg.registry is not None and cfg.registry.host == host:
        return cfg.registry
    for r in cfg.updates.registries:
        reg = RegistryConfig(url=r.url, insecure=r.insecure, username=r.username, password=r.password)
        if reg.host == host:
            return reg
    return RegistryConfig(url=host)


def build_engine(cfg: Config, store, *, counter: RequestCounter | None = None, targets: TargetFactory | None = None,
                 max_concurrency: int | None = None, backoff_initial: float = 5.0, page_size: int = 200,
                 clock: Callable[[], float] = time.time, bus: EventBus | None = None) -> UpdateEngine:
    """The engine publishes on ``bus``; whoever made the bus (:class:`poller.runtime.Runtime`)
    has subscribed what listens to it. Without one (a test) nothing listens."""
    if bus is None:
        bus = EventBus()
    history = UpdateHistory(store, clock=clock)
    clients: dict[str, RegistryClient] = {}
    watchers: dict[str, ImageWatcher] = {}
    for d in cfg.updates.deployments:
        host = d.registry_host
        if host not in clients:
            clients[host] = RegistryClient(registry_config(cfg, host), counter=counter,
                                           max_concurrency=max_concurrency or cfg.updates.registry_concurrency)
        if d.image not in watchers:
            watchers[d.image] = ImageWatcher(d.image, clients[host], history,
                                             backoff_initial=backoff_initial,
                                             backoff_max=cfg.updates.backoff_max,
                                             page_size=page_size, clock=clock)
    targets = targets or TargetFactory(cfg.updates, docker_base_url=cfg.docker.base_url)
    return UpdateEngine(cfg.updates, store, watchers=watchers, targets=targets, bus=bus,
                        clock=clock)
