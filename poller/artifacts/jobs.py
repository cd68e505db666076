"""``poller run``: one plugin cycle per environment every ``plugins.interval`` seconds."""

from __future__ import annotations

from collections.abc import Callable

from poller.artifacts.slots import QuorumSlots


def jobs(cfg, store, bus=None, *, open_fleet: Callable[[], QuorumSlots]) -> list:
    """``bus``: unused so far (plugin cycles report in the store's events). ``open_fleet``: the
    fleet's quorum slots (:mod:`poller.artifacts.slots`), opened when some environment runs on
    Docker and some server type shares a fleet service's quorum."""
    if not cfg.plugins.server_types or not cfg.plugins.environments:
        return []
    from poller.artifacts import docker_client, open_store, uses_fleet
    from poller.artifacts.rollout import PluginRollout
    from poller.logs import get_logger

    log = get_logger("poller.artifacts")
    docker_envs = [env for env, e in cfg.plugins.environments.items() if e.kubernetes_namespace is None]
    rollout = PluginRollout(cfg.plugins, open_store(cfg), docker_client(cfg),
                            fleet=open_fleet() if uses_fleet(cfg) else None) if docker_envs else None

    def make(env: str, runner):
        def run() -> dict:
            report = runner.cycle(env).as_dict()
            if report["restarted"] or report["errors"] or report["draining"]:
                store.record_event("plugins.cycle", env, **report)
                log.info("plugins.cycle", env=env, restarted=len(report["restarted"]),
                         draining=len(report["draining"]), errors=len(report["errors"]))
            return report
        return run

    out = [(f"plugins:{env}", cfg.plugins.interval, make(env, rollout))
           for env, e in cfg.plugins.environments.items() if e.kubernetes_namespace is None]
    kube_envs = [env for env, e in cfg.plugins.environments.items() if e.kubernetes_namespace]
    if kube_envs:
        from poller.artifacts.kube import KubePluginRollout, apps_api

        kube = KubePluginRollout(cfg.plugins, open_store(cfg), apps_api(cfg.plugins.kubeconfig))
        out += [(f"plugins:{env}", cfg.plugins.interval, make(env, kube)) for env in kube_envs]
    return out

