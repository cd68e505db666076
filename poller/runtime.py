"""The composition root: one :class:`Runtime` per process, built once from the :class:`Config`.

Every command and the HTTP API (``create_app(runtime)``) take their parts from it; no other
module wires one domain to another. A part is built the first time something asks for it and
then shared, so a command builds only what it uses (a Kubernetes client only when a configured
plugin environment or deployment needs one) and ``poller run`` builds each thing once:

* ``store``, ``bus`` (:class:`~poller.events.EventBus`), ``registry`` and ``sources`` (shared by
  the pipeline and rollbacks), ``pipeline`` (:meth:`build_pipeline`), ``scheduler``
  (:meth:`build_scheduler`);
* ``docker_client(...)`` and ``kube_client(...)``: the Docker and Kubernetes client factories
  (:mod:`poller.docker_engine`, :mod:`poller.kube`), ``targets`` (deployment targets and their
  per-cluster clients);
* ``engine`` (the update engine), ``chart_watchers``, ``fleet`` (the fleet's etcd state),
  ``artifacts`` and :meth:`plugin_rollout`, ``rollbacks``;
* subscribers: ``notifications`` (``notify:``), ``metrics``, :meth:`correlate_logs`.

Nothing here reads the environment; tests build a ``Runtime(config, store=...)`` and pass in
any part they made themselves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from poller.config import Config
from poller.errors import ConfigError
from poller.events import EventBus
from poller.http import RequestCounter
from poller.procs import pid_alive
from poller.store import Store

if TYPE_CHECKING:
    from poller.artifacts.store import ArtifactStore
    from poller.builds.builder import BuildPlan
    from poller.charts.watcher import ChartWatcher
    from poller.fleet.agent import Agent
    from poller.fleet.state import FleetState
    from poller.metrics import Metrics
    from poller.notify import Notifications, Notifier
    from poller.pipeline import Pipeline
    from poller.registry.client import RegistryClient
    from poller.rollback import Rollbacks
    from poller.scheduler import Scheduler
    from poller.updater.engine import UpdateEngine
    from poller.updater.target_factory import TargetFactory

T = TypeVar("T")


def open_store(cfg: Config) -> Store:
    return Store(cfg.store_target, log_limit=cfg.build.log_limit_kb * 1024)


def open_state_dir(cfg: Config) -> Path:
    """``state_dir``, created if missing (git sources keep their mirrors and locks there); one
    that can't be created is a config error naming it, before any build starts."""
    path = cfg.state_path
    if any(s.git for s in cfg.sources):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc.strerror or exc}", file=cfg.path,
                              key="state_dir") from None
    return path


def _pid_alive(pid: int | None) -> bool:
    """Another process of this machine that still runs (this process's own builds are not)."""
    return pid != os.getpid() and pid_alive(pid)


class Runtime:
    """Everything a ``poller`` process runs with. Parts given to the constructor are used as
    they are (tests); every other part is built from ``config`` on first use, once."""

    def __init__(self, config: Config, *, store: Store | None = None, bus: EventBus | None = None,
                 counter: RequestCounter | None = None, pipeline: Any = None, scheduler: Any = None,
                 targets: Any = None, live_logs: Any = None):
        self.config = config
        self.bus = bus if bus is not None else EventBus()
        self.counter = counter
        #: The pipeline when this process builds (``run``, ``once``, ``worker``), else None.
        self.pipeline: Pipeline | None = pipeline
        #: The scheduler when this process runs one (``poller run``), else None.
        self.scheduler: Scheduler | None = scheduler
        #: Running builds' logs for the dashboard (``poller run``), else None.
        self.live_logs = live_logs
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}
        if store is not None:
            self._parts["store"] = store
        if targets is not None:
            self._parts["targets"] = targets

    def _part(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]

    # -- storage and the registry ------------------------------------------------------------
    @property
    def store(self) -> Store:
        return self._part("store", lambda: open_store(self.config))

    @property
    def registry(self) -> RegistryClient | None:
        """The build registry's client (``None`` in a charts-only configuration)."""
        def build() -> RegistryClient | None:
            from poller.registry.client import RegistryClient

            cfg = self.config.registry
            return RegistryClient(cfg, counter=self.counter) if cfg is not None else None
        return self._part("registry", build)

    @property
    def sources(self) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            from poller.sources.factory import make_source

            state_dir = open_state_dir(self.config)
            return {s.name: make_source(s, cache_dir=state_dir, counter=self.counter)
                    for s in self.config.sources}
        return self._part("sources", build)

    # -- clients -------------------------------------------------------------------------------
    def docker_client(self, *urls: str | None) -> Callable[[], Any]:
        """A Docker client factory for the first of ``urls`` that is set, else ``docker.base_url``,
        else the environment (:func:`poller.docker_engine.client_factory`)."""
        from poller.docker_engine import client_factory

        return client_factory(*urls, self.config.docker.base_url)

    def kube_client(self, kubeconfig: str | None = None, context: str | None = None) -> Any:
        """One Kubernetes ``ApiClient`` per (kubeconfig, context), built on first use
        (:func:`poller.kube.api_client`)."""
        path = os.path.expanduser(kubeconfig) if kubeconfig else None

        def build() -> Any:
            from poller import kube

            return kube.api_client(path, context=context)
        return self._part(f"kube:{path}:{context}", build)

    @property
    def targets(self) -> TargetFactory:
        def build() -> TargetFactory:
            from poller.updater.target_factory import TargetFactory

            return TargetFactory(self.config.updates, docker_base_url=self.config.docker.base_url)
        return self._part("targets", build)

    # -- subscribers ---------------------------------------------------------------------------
    @property
    def notifier(self) -> Notifier | None:
        def build() -> Notifier | None:
            from poller.notify import Notifier

            return Notifier(self.config.notify) if self.config.notify.webhooks else None
        return self._part("notifier", build)

    @property
    def notifications(self) -> Notifications | None:
        """``notify:`` subscribed to the bus (on first use), or None when no webhook is set."""
        def build() -> Notifications | None:
            from poller.notify import Notifications

            if self.notifier is None:
                return None
            notifications = Notifications(self.notifier, self.store)
            notifications.subscribe(self.bus)
            return notifications
        return self._part("notifications", build)

    @property
    def metrics(self) -> Metrics:
        """The process's Prometheus metrics, following the bus, scrape-time gauges on the store."""
        def build() -> Metrics:
            from poller.metrics import install

            return install(self.bus, self.store)
        return self._part("metrics", build)

    def correlate_logs(self) -> None:
        """Log lines inside a build or rollout carry its correlation id (``cid=build-12``)."""
        def build() -> bool:
            from poller.events import subscribe_log_correlation

            subscribe_log_correlation(self.bus)
            return True
        self._part("correlation", build)

    def observe(self) -> None:
        """Subscribe what ``poller run`` follows the bus with: log correlation, metrics,
        notifications and (when set) the dashboard's live logs."""
        with self._lock:
            self.correlate_logs()
            self.metrics  # noqa: B018 - follows the bus from now on
            self.notifications  # noqa: B018 - None without notify.webhooks
            if self.live_logs is not None and "live_logs" not in self._parts:
                self.live_logs.subscribe(self.bus)
                self._parts["live_logs"] = True

    # -- domains -------------------------------------------------------------------------------
    def build_pipeline(self, *, on_build_log: Callable[[BuildPlan, str], None] | None = None,
                       queue: bool = True) -> Pipeline:
        """The pipeline (once): sources → plans → builds → registry, publishing on the bus.
        ``queue``: with a PostgreSQL store, builds are jobs for ``poller worker`` processes."""
        with self._lock:
            if self.pipeline is None:
                self.pipeline = self._new_pipeline(on_build_log, queue)
            return self.pipeline

    def _new_pipeline(self, on_build_log, queue: bool) -> Pipeline:
        from poller.builds.factory import make_builder
        from poller.docker_engine import engine_url
        from poller.pipeline import Pipeline

        store = self.store
        store.mark_interrupted(older_than_pid_alive=_pid_alive)
        builder = make_builder(self.config, self.docker_client(),
                               docker_engine=engine_url(self.config.docker.base_url))
        # without a registry there are no sources, so the pipeline never reaches for it
        pipeline = Pipeline(self.config, store=store, registry=self.registry,  # type: ignore[arg-type]
                            builder=builder, sources=self.sources, on_build_log=on_build_log,
                            bus=self.bus)
        if queue and store.pg:
            from poller.queue import BuildQueue

            build_queue = BuildQueue(self.config.store_target, queue=self.config.store.queue.name)
            pipeline.enqueue = build_queue.enqueue
            pipeline.close_on_shutdown(build_queue.close)  # its connection pool's threads end with it
        return pipeline

    @property
    def engine(self) -> UpdateEngine:
        """The update engine; ``notify:`` hears its updates and approvals through the bus."""
        def build() -> UpdateEngine:
            from poller.updater.build import build_engine

            self.notifications  # noqa: B018 - subscribed before the first update is published
            return build_engine(self.config, self.store, counter=self.counter,
                                targets=self.targets, bus=self.bus)
        return self._part("engine", build)

    @property
    def chart_watchers(self) -> list[ChartWatcher]:
        def build() -> list[ChartWatcher]:
            from poller.charts.watcher import ChartWatcher

            return [ChartWatcher(repo, self.config.charts, self.store, bus=self.bus)
                    for repo in self.config.charts.repos]
        return self._part("chart_watchers", build)

    @property
    def fleet(self) -> FleetState:
        """The fleet's etcd state (``fleet.etcd``; nothing is asked of etcd until it is used)."""
        def build() -> FleetState:
            from poller.fleet import open_state

            return open_state(self.config.fleet)
        return self._part("fleet", build)

    def fleet_agent(self, stop: threading.Event) -> Agent:
        """This machine's fleet agent (``poller fleet agent``)."""
        from poller.fleet.runner import build_agent

        agent_cfg = self.config.fleet.agent
        assert agent_cfg is not None   # the command checks the config first
        return build_agent(self.config.fleet, self.fleet, self.docker_client(agent_cfg.docker_url)(),
                           stop=stop)

    @property
    def artifacts(self) -> ArtifactStore:
        def build() -> ArtifactStore:
            from poller.artifacts.store import ArtifactStore

            # plugin artifacts live in the build registry (plugins.repository)
            return ArtifactStore(self.registry, self.config.plugins.repository)  # type: ignore[arg-type]
        return self._part("artifacts", build)

    def plugin_rollout(self, env: str) -> Any:
        """The plugin rollout that serves ``env``: Kubernetes when it names a namespace, else
        the servers on Docker (sharing a fleet service's quorum when a server type names one)."""
        environment = self.config.plugins.environments.get(env)
        if environment is not None and environment.kubernetes_namespace:
            def kube() -> Any:
                from kubernetes import client

                from poller.artifacts.kube import KubePluginRollout

                apps = client.AppsV1Api(self.kube_client(self.config.plugins.kubeconfig))
                return KubePluginRollout(self.config.plugins, self.artifacts, apps)
            return self._part("plugins:kubernetes", kube)

        def docker() -> Any:
            from poller.artifacts import uses_fleet
            from poller.artifacts.rollout import PluginRollout

            fleet = self.fleet if uses_fleet(self.config) else None
            return PluginRollout(self.config.plugins, self.artifacts,
                                 self.docker_client(self.config.plugins.docker_url)(), fleet=fleet)
        return self._part("plugins:docker", docker)

    def rollbacks(self) -> Rollbacks:
        from poller.rollback import Rollbacks

        notifier = self.notifier
        return Rollbacks(self.config, self.store, registry=self.registry, sources=self.sources,
                         notify=notifier.send if notifier is not None else None)

    # -- poller run ----------------------------------------------------------------------------
    def periodic_jobs(self) -> list[tuple[str, float, Callable[[], Any]]]:
        """Every domain's periodic work in ``poller run``, each ``(id, interval, fn)``: chart
        watches, deployment updates, fleet releases, plugin cycles, the notification announcer."""
        from poller.artifacts.jobs import jobs as plugin_jobs
        from poller.fleet.jobs import jobs as fleet_jobs
        from poller.updater.jobs import jobs as update_jobs

        cfg = self.config
        jobs: list[tuple[str, float, Callable[[], Any]]] = [
            (f"charts:{w.repo.name}", w.repo.interval or cfg.poll.interval, w.reconcile)
            for w in self.chart_watchers]
        jobs += update_jobs(cfg, lambda: self.engine)
        jobs += fleet_jobs(cfg, lambda: self.fleet, self.registry, self.store, self.bus)
        jobs += plugin_jobs(cfg, self.store, self.plugin_rollout)
        if self.notifications is not None:
            jobs.append(("notify", min(15.0, cfg.poll.interval), self.notifications.announce))
        return jobs

    def build_scheduler(self) -> Scheduler:
        """The scheduler (once) over the pipeline and :meth:`periodic_jobs`."""
        with self._lock:
            if self.scheduler is None:
                from poller.scheduler import Scheduler

                self.scheduler = Scheduler(self.config, self.build_pipeline(),
                                           extra_jobs=self.periodic_jobs())
            return self.scheduler

    def close(self) -> None:
        """Stop what runs in the background (the targets' informer watches)."""
        targets = self._parts.get("targets")
        if targets is not None and hasattr(targets, "close"):
            targets.close()


def build_pipeline(cfg: Config, *, store: Store | None = None, counter: RequestCounter | None = None,
                   on_build_log: Callable[[BuildPlan, str], None] | None = None,
                   bus: EventBus | None = None, queue: bool = True) -> Pipeline:
    """A pipeline from ``cfg`` alone (tests, scripts): ``Runtime(cfg, ...).build_pipeline()``."""
    return Runtime(cfg, store=store, counter=counter, bus=bus).build_pipeline(
        on_build_log=on_build_log, queue=queue)
