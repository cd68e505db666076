"""The composition root: build the pipeline's parts from a :class:`Config`.

Entry points call :func:`build_pipeline`; nothing below reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from poller.builds.builder import BuildPlan
from poller.builds.factory import make_builder
from poller.config import Config
from poller.docker_engine import client_factory, engine_url
from poller.events import EventBus
from poller.http import RequestCounter
from poller.pipeline import Pipeline
from poller.registry.client import RegistryClient
from poller.sources.factory import make_source
from poller.store import Store


def open_store(cfg: Config) -> Store:
    return Store(cfg.store_target, log_limit=cfg.build.log_limit_kb * 1024)


def _pid_alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_pipeline(cfg: Config, *, store: Store | None = None,
                   counter: RequestCounter | None = None,
                   on_build_log: Callable[[BuildPlan, str], None] | None = None,
                   bus: EventBus | None = None, queue: bool = True) -> Pipeline:
    store = store or open_store(cfg)
    store.mark_interrupted(older_than_pid_alive=_pid_alive)
    # a charts-only configuration has no registry (and no sources that would need one)
    registry = RegistryClient(cfg.registry, counter=counter) if cfg.registry is not None else None
    builder = make_builder(cfg, client_factory(cfg.docker.base_url),
                           docker_engine=engine_url(cfg.docker.base_url))
    sources = {s.name: make_source(s, cache_dir=cfg.state_path, counter=counter) for s in cfg.sources}
    # without a registry there are no sources, so the pipeline never reaches for it
    pipeline = Pipeline(cfg, store=store, registry=registry, builder=builder,  # type: ignore[arg-type]
                        sources=sources, on_build_log=on_build_log, bus=bus)
    if queue and store.pg:  # builds are jobs for `poller worker` processes (poller.queue)
        from poller.queue import BuildQueue

        build_queue = BuildQueue(cfg.store_target, queue=cfg.store.queue.name)
        pipeline.enqueue = build_queue.enqueue
        pipeline.close_on_shutdown(build_queue.close)  # its connection pool's threads end with it
    return pipeline
