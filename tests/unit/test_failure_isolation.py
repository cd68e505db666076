"""A source that fails in a way nobody foresaw (a bug, an answer of a shape no check knew)
is that source's recorded failure; the other sources of the pass are still polled."""

from __future__ import annotations

from poller.config import parse_config
from poller.pipeline import Pipeline
from poller.registry.client import RegistryClient
from poller.sources.base import RefSnapshot
from poller.store import Store


class _Crashing:
    name, branch = "crashing", "master"

    def poll(self) -> RefSnapshot:
        raise RecursionError("maximum recursion depth exceeded " + "x" * 10_000)


class _Quiet:
    branch = "master"

    def __init__(self, name: str):
        self.name = name

    def poll(self) -> RefSnapshot:
        return RefSnapshot(self.branch, None, {})  # no branch, no tags: nothing to decide


def test_an_unforeseen_failure_is_that_sources_recorded_error_and_the_pass_goes_on(tmp_path):
    names = ["before", "crashing", "after"]
    cfg = parse_config({
        "registry": {"url": "127.0.0.1:9", "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")}, "api": {"listen": None},
        "sources": [{"name": n, "git": {"url": f"file:///{n}.git"}, "branch": "master",
                     "image": f"127.0.0.1:9/{n}"} for n in names]})
    store = Store(cfg.store_path)
    sources = {"before": _Quiet("before"), "crashing": _Crashing(), "after": _Quiet("after")}
    pipeline = Pipeline(cfg, store=store, registry=RegistryClient(cfg.registry), builder=None,
                        sources=sources)
    try:
        reports = {r.source: r for r in pipeline.run_once()}
    finally:
        pipeline.shutdown()
    assert set(reports) == set(names)
    assert reports["before"].error is None and reports["after"].error is None
    error = reports["crashing"].error
    assert error.startswith("internal error: RecursionError: maximum recursion depth")
    assert len(error) <= 500  # whatever the exception carried
    recorded = {s["name"]: s for s in store.sources()}
    assert recorded["crashing"]["last_error"] == error
    assert recorded["after"]["last_error"] is None and recorded["after"]["last_ok"]
