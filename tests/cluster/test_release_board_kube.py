"""The release board reads what a Kubernetes workload runs from the API server, not from the
store: an out-of-band change (``kubectl set image``) shows on the board at once."""

from __future__ import annotations

import pytest
import yaml

from poller.config import parse_config
from poller.releases import release_board
from poller.store import Store
from poller.updater.build import build_engine
from poller.updater.target_factory import TargetFactory
from tests.cluster.test_updater_workloads import workload
from tests.integration.updater_support import seed_tag

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def test_board_shows_what_the_workload_runs_even_after_an_out_of_band_change(
        tmp_path, registry, kube, namespace, closing):
    repo = f"{registry.addr}/game"
    seed_tag(registry, "game", "1.0.0")
    seed_tag(registry, "game", "1.1.0")
    kube.kubectl("apply", "-n", namespace, "-f", "-",
                 input=yaml.safe_dump(workload("Deployment", "game", f"{repo}:1.0.0", "busybox:s")))
    cfg = parse_config({
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / "s.db")},
        "sources": [{"name": "game", "git": {"url": "file:///unused"}, "branch": "master",
                     "image": repo}],
        "updates": {"kubeconfig": kube.kubeconfig, "deployments": [
            {"name": "game-prod", "image": repo, "policy": "minor",
             "target": {"kubernetes": {"kind": "Deployment", "name": "game",
                                       "namespace": namespace, "container": "engine"}}}]},
    }, file="t.yaml", env={})
    store = Store(tmp_path / "s.db")
    targets = TargetFactory(cfg.updates, rollout_timeout=120)

    def runs() -> str | None:
        [board] = release_board(cfg, store, targets=targets)
        [r] = board.running
        assert r.error is None, r.error
        return r.image

    assert runs() == f"{repo}:1.0.0"
    [o] = closing(build_engine(cfg, store, targets=targets)).cycle()
    assert o.action == "updated"
    assert runs() == f"{repo}:1.1.0"
    # someone changes it by hand: the store still says 1.1.0, the board says what runs
    kube.kubectl("set", "image", "-n", namespace, "deployment/game", f"engine={repo}:1.0.0")
    assert runs() == f"{repo}:1.0.0"


def test_staging_rollback_moves_a_kubernetes_deployment_that_follows_staging(
        tmp_path, registry, kube, namespace, closing):
    from poller.registry.client import RegistryClient
    from poller.rollback import Rollbacks

    repo = f"{registry.addr}/game"
    d1 = seed_tag(registry, "game", "sha-111111111111", build="one")
    seed_tag(registry, "game", "staging", build="one")
    d2 = seed_tag(registry, "game", "staging", build="two")
    assert d1 != d2
    kube.kubectl("apply", "-n", namespace, "-f", "-",
                 input=yaml.safe_dump(workload("Deployment", "stg", f"{repo}:staging", "busybox:s")))
    cfg = parse_config({
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / "s.db")},
        "sources": [{"name": "game", "git": {"url": "file:///unused"}, "branch": "master",
                     "image": repo}],
        "updates": {"kubeconfig": kube.kubeconfig, "deployments": [
            {"name": "game-staging", "image": repo, "policy": "digest", "tag": "staging",
             "target": {"kubernetes": {"kind": "Deployment", "name": "stg",
                                       "namespace": namespace, "container": "engine"}}}]},
    }, file="t.yaml", env={})
    store = Store(tmp_path / "s.db")
    targets = TargetFactory(cfg.updates, rollout_timeout=120)
    engine = closing(build_engine(cfg, store, targets=targets))
    [o] = engine.cycle()
    assert o.to_ref == f"staging@{d2}"

    plan = Rollbacks(cfg, store, registry=RegistryClient(cfg.registry), sources={}).staging(
        "game", to="sha-111111111111", reason="bad build", by="carol")
    assert plan.done and plan.to_digest == d1
    [o] = engine.cycle()
    assert (o.action, o.to_ref) == ("updated", f"staging@{d1}")
    [board] = release_board(cfg, store, targets=targets)
    assert board.running[0].image == f"{repo}:staging@{d1}"
    assert board.hold is not None and board.hold["by"] == "carol"
