"""The updater at scale against the real API server: reads come from list+watch caches (an
unchanged cycle costs zero API-server requests, counted at the API server), a hung rollout
never delays another deployment, a broken watch resumes with a correct cache, a watch answered
``410 Gone`` lists again, and a write decided on a stale read is decided again from fresh state
instead of overwriting."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from poller.config import parse_config
from poller.kube import api_client
from poller.runtime import Runtime
from poller.store import Store
from poller.targets.informer import Informer
from poller.updater.build import build_engine
from poller.updater.history import UpdateHistory
from poller.updater.target_factory import TargetFactory
from tests.cluster.test_updater_workloads import get, images, workload
from tests.doubles.apiserver_front import ApiServerFront
from tests.fixtures.apiserver_metrics import request_totals, workload_requests
from tests.fixtures.services import wait_until
from tests.integration.updater_support import seed_tag

pytestmark = [pytest.mark.cluster, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def _deployment(name: str, image: str, namespace: str, policy: str = "patch") -> dict:
    return {"name": name, "image": image, "policy": policy,
            "target": {"kubernetes": {"kind": "Deployment", "name": name, "namespace": namespace,
                                      "container": "engine"}}}


def _config(tmp_path, registry, kubeconfig: str, deployments: list[dict], **updates):
    data = {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp_path / "s.db")},
            "updates": {"kubeconfig": kubeconfig, "interval": 1, "deployments": deployments, **updates}}
    return parse_config(data, file="t.yaml", env={})


def _apply(kube, namespace: str, obj: dict) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def _hanging(name: str, image: str) -> dict:
    """A Deployment whose new pods never schedule: its rollout never becomes healthy."""
    w = workload("Deployment", name, image, "busybox:s", replicas=1)
    w["spec"]["template"]["spec"]["nodeSelector"] = {"no-such-node": "true"}
    w["spec"]["strategy"] = {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return w


def test_unchanged_cycle_makes_zero_api_server_requests(tmp_path, registry, kube, namespace):
    repo = f"{registry.addr}/game"
    seed_tag(registry, "game", "1.0.0")
    for i in range(3):
        _apply(kube, namespace, workload("Deployment", f"g{i}", f"{repo}:1.0.0", "busybox:s", replicas=1))
    cfg = _config(tmp_path, registry, kube.kubeconfig,
                  [_deployment(f"g{i}", repo, namespace) for i in range(3)])
    eng = build_engine(cfg, Store(tmp_path / "s.db"))
    try:
        assert [o.action for o in eng.cycle(settle=False)] == ["up-to-date"] * 3
        api = kube.api_client()
        before = request_totals(api)
        for _ in range(3):
            assert [o.action for o in eng.cycle(settle=False)] == ["up-to-date"] * 3
        after = request_totals(api)
        # what the updater would send (reads, and its JSON patches); the controllers' own
        # status PUTs on the same resources are not the updater's
        # on deployments, the only kind this updater watches here (no gradual rollout, so no pod
        # cache): OpenKruiseGame, Kruise and the real node's components GET pods cluster-wide
        ours = {k: n for k, n in workload_requests(before, after).items()
                if k.split()[0] in ("GET", "LIST", "PATCH") and k.split()[1] == "deployments"}
        assert ours == {}, "an unchanged cycle made API-server requests"
    finally:
        eng.close()


def test_a_closed_engine_has_ended_its_watch_threads(tmp_path, registry, kube, namespace):
    """A watch thread still reading or logging while the interpreter exits can abort it."""
    repo = f"{registry.addr}/game"
    seed_tag(registry, "game", "1.0.0")
    _apply(kube, namespace, workload("Deployment", "g0", f"{repo}:1.0.0", "busybox:s", replicas=0))
    eng = build_engine(_config(tmp_path, registry, kube.kubeconfig, [_deployment("g0", repo, namespace)]),
                       Store(tmp_path / "s.db"))

    def watching() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.endswith(f"-{namespace}") and t.is_alive()]
    try:
        assert [o.action for o in eng.cycle(settle=False)] == ["up-to-date"]
        assert watching()
    finally:
        eng.close()
    assert watching() == []


def test_unchanged_cycle_store_work_does_not_grow_with_deployments(tmp_path, registry, kube, namespace):
    """Pins, approvals, watcher back-off and recent rollouts are read once per cycle and the
    watchers' checks written in one statement: not a few store statements per deployment."""
    n = 16
    for i in range(n):
        seed_tag(registry, f"each{i}", "1.0.0")
        _apply(kube, namespace, workload("Deployment", f"e{i}", f"{registry.addr}/each{i}:1.0.0", "busybox:s",
                                         replicas=0))
    cfg = _config(tmp_path, registry, kube.kubeconfig,
                  [_deployment(f"e{i}", f"{registry.addr}/each{i}", namespace) for i in range(n)])
    store = Store(tmp_path / "s.db")
    eng = build_engine(cfg, store)
    statements: list[str] = []
    try:
        assert [o.action for o in eng.cycle(settle=False)] == ["up-to-date"] * n
        sa.event.listen(store._engine, "before_cursor_execute",
                        lambda conn, cursor, sql, params, context, many: statements.append(sql))
        assert [o.action for o in eng.cycle(settle=False)] == ["up-to-date"] * n
        assert len(statements) < n, f"{len(statements)} store statements for {n} deployments: {statements}"
        state = UpdateHistory(store).watcher_state(f"{registry.addr}/each{n - 1}")
        assert state is not None and state["failures"] == 0 and state["last_ok"] is not None
    finally:
        eng.close()


def test_hung_rollout_does_not_delay_other_deployments(tmp_path, registry, kube, namespace, closing):
    """One rollout hangs (its default 300 s deadline); a release of another image pushed
    meanwhile is patched within the next cycles, by the periodic job ``poller run`` runs."""
    stuck, fast = f"{registry.addr}/stuck", f"{registry.addr}/fast"
    seed_tag(registry, "stuck", "1.0.0")
    seed_tag(registry, "stuck", "1.0.1")
    seed_tag(registry, "fast", "1.0.0")
    _apply(kube, namespace, _hanging("stuck", f"{stuck}:1.0.0"))
    _apply(kube, namespace, workload("Deployment", "fast", f"{fast}:1.0.0", "busybox:s", replicas=1))
    cfg = _config(tmp_path, registry, kube.kubeconfig,
                  [_deployment("stuck", stuck, namespace), _deployment("fast", fast, namespace)])
    runtime = closing(Runtime(cfg, store=Store(tmp_path / "s.db")))  # its watches end with the test
    [(_, interval, job)] = runtime.periodic_jobs()
    stop = threading.Event()

    def scheduler():               # what ``poller run`` does with the job
        while not stop.is_set():
            job()
            stop.wait(interval)

    runner = threading.Thread(target=scheduler, daemon=True)
    runner.start()
    try:
        wait_until(lambda: images(get(kube, "Deployment", "stuck", namespace))["engine"] == f"{stuck}:1.0.1",
                   30, what="the stuck deployment patched")
        seed_tag(registry, "fast", "1.0.1")
        wait_until(lambda: images(get(kube, "Deployment", "fast", namespace))["engine"] == f"{fast}:1.0.1",
                   interval + 10, what="the other deployment patched while the first rollout hangs")
        wait_until(lambda: any(r.deployment == "fast" and r.status == "succeeded"
                               for r in UpdateHistory(Store(tmp_path / "s.db")).list()), 30,
                   what="the other deployment's update recorded as succeeded")
        assert [r.status for r in UpdateHistory(Store(tmp_path / "s.db")).list(deployment="stuck")] == ["running"]
    finally:
        stop.set()


def test_hung_helm_upgrade_does_not_delay_other_deployments(tmp_path, registry, kube, namespace, helm, closing):
    """A helm release whose pods never schedule: ``helm upgrade --wait`` waits its whole 300 s
    timeout. A release of another image pushed meanwhile is patched within the next cycles."""
    chart = str(ROOT / "charts" / "game-server")
    game, fast = f"{registry.addr}/game-server", f"{registry.addr}/fast"
    seed_tag(registry, "game-server", "1.0.0")
    seed_tag(registry, "game-server", "1.0.1")
    seed_tag(registry, "fast", "1.0.0")
    helm.run("install", "stuck", chart, "-n", namespace, "--set", f"engine.image.repository={game}",
             "--set", "engine.image.tag=1.0.0", "--set", "hotUpdate.enabled=false",
             "--set-string", "nodeSelector.no-such-node=true")
    _apply(kube, namespace, workload("Deployment", "fast", f"{fast}:1.0.0", "busybox:s", replicas=1))
    cfg = _config(tmp_path, registry, kube.kubeconfig, [
        {"name": "stuck", "image": game, "policy": "patch",
         "target": {"helm": {"release": "stuck", "namespace": namespace, "chart": chart,
                             "value_path": "engine.image.tag"}}},
        _deployment("fast", fast, namespace)], helm=helm.bin)
    runtime = Runtime(cfg, store=Store(tmp_path / "s.db"))
    [(_, interval, job)] = runtime.periodic_jobs()
    stop = threading.Event()

    def scheduler():               # what ``poller run`` does with the job
        while not stop.is_set():
            job()
            stop.wait(interval)

    def engines() -> set[str]:
        items = json.loads(kube.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)["items"]
        return {images(d)["engine"] for d in items}

    runner = threading.Thread(target=scheduler, daemon=True)
    runner.start()
    try:
        wait_until(lambda: f"{game}:1.0.1" in engines(), 60, what="the stuck release upgraded (helm waiting)")
        seed_tag(registry, "fast", "1.0.1")
        wait_until(lambda: f"{fast}:1.0.1" in engines(), interval + 10,
                   what="the other deployment patched while helm waits for the first release")
        wait_until(lambda: any(r.deployment == "fast" and r.status == "succeeded"
                               for r in UpdateHistory(Store(tmp_path / "s.db")).list()), 30,
                   what="the other deployment's update recorded as succeeded")
        assert [r.status for r in UpdateHistory(Store(tmp_path / "s.db")).list(deployment="stuck")] == ["running"]
    finally:
        stop.set()
        runner.join(60)   # its last cycle ends before the runtime's watches are closed
        closing(runtime)


def test_hung_rollout_past_its_deadline_is_reported_once_and_held(tmp_path, registry, kube, namespace):
    repo = f"{registry.addr}/stuck"
    seed_tag(registry, "stuck", "1.0.0")
    seed_tag(registry, "stuck", "1.0.1")
    _apply(kube, namespace, _hanging("stuck", f"{repo}:1.0.0"))
    cfg = _config(tmp_path, registry, kube.kubeconfig, [_deployment("stuck", repo, namespace)])
    eng = build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates, rollout_timeout=2))
    seen: list[str] = []
    try:
        [o] = eng.cycle(settle=False)
        assert o.action == "rolling"

        def failed_once() -> bool:
            seen.extend(o.action for o in eng.cycle(settle=False))
            return "failed" in seen
        wait_until(failed_once, 30, interval=0.5, what="the hung rollout reported")
        for _ in range(3):
            seen.extend(o.action for o in eng.cycle(settle=False))
        assert seen.count("failed") == 1 and seen[-1] == "up-to-date", seen
        assert [r.status for r in UpdateHistory(eng.store).list()] == ["failed"]
    finally:
        eng.close()


def test_broken_watch_resumes_and_the_cache_stays_correct(tmp_path, registry, kube, namespace):
    """The watch is ended at the wire while other people change, delete and create
    deployments; the engine's next cycles see exactly what the API server has."""
    repo = f"{registry.addr}/game"
    for tag in ("1.0.0", "1.0.1", "1.0.2"):
        seed_tag(registry, "game", tag)
    _apply(kube, namespace, workload("Deployment", "a", f"{repo}:1.0.0", "busybox:s", replicas=1))
    _apply(kube, namespace, workload("Deployment", "b", f"{repo}:1.0.0", "busybox:s", replicas=1))
    with ApiServerFront(kube.kubeconfig) as front:
        cfg = _config(tmp_path, registry, front.kubeconfig(str(tmp_path / "front.kubeconfig")),
                      [{**_deployment(n, repo, namespace), "pin": "1.0.0"} for n in "abc"])
        eng = build_engine(cfg, Store(tmp_path / "s.db"))
        try:
            outs = {o.deployment: o for o in eng.cycle(settle=False)}
            assert (outs["a"].action, outs["b"].action) == ("pinned", "pinned")
            assert outs["c"].action == "failed" and "404" in outs["c"].detail
            watches = front.watches_opened
            front.break_watches()
            kube.kubectl("set", "image", "-n", namespace, "deployment/a", f"engine={repo}:1.0.2")
            kube.kubectl("delete", "deployment", "b", "-n", namespace)
            _apply(kube, namespace, workload("Deployment", "c", f"{repo}:1.0.1", "busybox:s", replicas=1))
            wait_until(lambda: front.watches_opened > watches, 30, what="the watch re-established")

            last: list = []

            def seen() -> dict:
                outs = eng.cycle(settle=False)
                last[:] = outs
                return {o.deployment: (o.action, o.from_ref) for o in outs}
            def pinned_back(name: str) -> bool:
                eng.cycle(settle=False)
                return images(get(kube, "Deployment", name, namespace))["engine"] == f"{repo}:1.0.0"
            # pinned to 1.0.0: the engine (reading its cache) patches a and the new c back
            wait_until(lambda: pinned_back("a") and pinned_back("c"), 30, interval=0.5,
                       what="a and the new c seen and pinned back")
            try:
                wait_until(lambda: seen() == {"a": ("pinned", "1.0.0"), "b": ("failed", None),
                                              "c": ("pinned", "1.0.0")}, 30, interval=0.5, what="steady state")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last cycle: {last}") from None
            refs = {(r.deployment, r.from_ref, r.to_ref) for r in UpdateHistory(eng.store).list()}
            assert refs == {("a", "1.0.2", "1.0.0"), ("c", "1.0.1", "1.0.0")}
        finally:
            eng.close()


def _view(objs: list[dict]) -> dict[str, tuple[str, str]]:
    return {o["metadata"]["name"]: (images(o)["engine"], o["metadata"]["resourceVersion"]) for o in objs}


@pytest.mark.parametrize("as_", ["event", "status"])
def test_watch_answered_410_gone_lists_again_and_sees_what_changed_meanwhile(as_, tmp_path, kube, namespace):
    """The informer is cut off; meanwhile a deployment changes, one is deleted and one created;
    when it resumes, the API server no longer has its resourceVersion and answers 410 (an ERROR
    event in a 200 stream, or the HTTP status). It must LIST once more (counted at the wire),
    then hold exactly what the API server has, and go on watching from there."""
    repo = "registry.invalid/game"
    _apply(kube, namespace, workload("Deployment", "a", f"{repo}:1.0.0", "busybox:s", replicas=0))
    _apply(kube, namespace, workload("Deployment", "b", f"{repo}:1.0.0", "busybox:s", replicas=0))

    def server() -> dict:
        return _view(json.loads(kube.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)["items"])

    with ApiServerFront(kube.kubeconfig) as front:
        informer = Informer(api_client(front.kubeconfig(str(tmp_path / "front.kubeconfig"))), "Deployment",
                            namespace)
        try:
            assert set(_view(informer.list())) == {"a", "b"}
            wait_until(lambda: front.watches_opened == 1, 30, what="the informer watching")
            assert front.lists("deployments") == 1
            front.hold_watches()
            front.break_watches()
            wait_until(lambda: front.watches_held == 1, 30, what="the watch resumed (held at the front)")
            kube.kubectl("set", "image", "-n", namespace, "deployment/a", f"engine={repo}:1.0.2")
            kube.kubectl("delete", "deployment", "b", "-n", namespace)
            _apply(kube, namespace, workload("Deployment", "c", f"{repo}:1.0.1", "busybox:s", replicas=0))
            now = int(json.loads(kube.kubectl("get", "--raw", f"/apis/apps/v1/namespaces/{namespace}/deployments")
                                 .stdout)["metadata"]["resourceVersion"])
            front.release_watches(expire_before=now, as_=as_)

            wait_until(lambda: _view(informer.list()) == server(), 30, interval=0.2,
                       what="the cache equal to the API server after the 410")
            assert front.watches_expired == 1
            assert front.lists("deployments") == 2, "not exactly one LIST after the 410"
            # and it watches on from the new list: a later change arrives without another LIST
            wait_until(lambda: front.watches_opened == 2, 30, what="the watch from the new list")
            kube.kubectl("set", "image", "-n", namespace, "deployment/c", f"engine={repo}:1.0.3")
            wait_until(lambda: _view(informer.list()) == server(), 30, interval=0.2,
                       what="a change after the relist seen")
            assert _view(informer.list())["c"][0] == f"{repo}:1.0.3"
            assert front.lists("deployments") == 2
        finally:
            informer.stop()


def test_write_on_a_stale_read_is_decided_again_not_overwritten(tmp_path, registry, kube, namespace):
    """Between the engine's read and its patch someone else deploys 1.2.0 (injected at the
    wire, before the PATCH reaches the API server). The resourceVersion precondition fails;
    the engine reads again and finds nothing to do, instead of downgrading to 1.1.0."""
    repo = f"{registry.addr}/game"
    seed_tag(registry, "game", "1.0.0")
    seed_tag(registry, "game", "1.1.0")
    _apply(kube, namespace, workload("Deployment", "game", f"{repo}:1.0.0", "busybox:s", replicas=1))
    with ApiServerFront(kube.kubeconfig) as front:
        cfg = _config(tmp_path, registry, front.kubeconfig(str(tmp_path / "front.kubeconfig")),
                      [_deployment("game", repo, namespace, policy="minor")])
        front.before("PATCH", r"/deployments/game\b", lambda: kube.kubectl(
            "set", "image", "-n", namespace, "deployment/game", f"engine={repo}:1.2.0"))
        eng = build_engine(cfg, Store(tmp_path / "s.db"), targets=TargetFactory(cfg.updates, rollout_timeout=60))
        try:
            outs = eng.cycle(settle=False)
            assert images(get(kube, "Deployment", "game", namespace))["engine"] == f"{repo}:1.2.0", outs
            assert [(o.action, o.from_ref) for o in outs] == [("up-to-date", "1.2.0")]
            assert [r.status for r in UpdateHistory(eng.store).list()] in ([], ["abandoned"])
        finally:
            eng.close()


def test_api_requests_counted_at_the_api_server_see_a_read(kube, namespace):
    """The counter the tests above rely on does count a plain read."""
    api = kube.api_client()
    before = request_totals(api)
    kube.kubectl("get", "deployments", "-n", namespace, "-o", "json")
    assert json.dumps(workload_requests(before, request_totals(api))).count("LIST deployments") == 1
