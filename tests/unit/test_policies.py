"""Policies, rollout planning and updater settings: pure values, no services."""

from __future__ import annotations

import pytest

from poller.config import parse_config
from poller.errors import ConfigError
from poller.policy.base import Offer, Running
from poller.policy.digest import DigestPolicy
from poller.policy.glob import GlobPolicy
from poller.policy.regex import RegexPolicy
from poller.policy.semver import SemverPolicy
from poller.rollout.plan import Server, next_batch, order, resolve, step_targets
from poller.targets.base import ImageRef

TAGS = ("1.2.3", "1.2.4", "1.2.10", "1.3.0", "1.4.0-rc.1", "2.0.0", "v2.1.0-beta.2", "latest",
        "staging", "sha-abc", "0.9.0")


def decide(policy, tag, tags=TAGS, skip=()):
    move = policy.decide(Running(tag), Offer(tags=tuple(tags)), skip=skip)
    return move and move.tag


@pytest.mark.parametrize("level,expected", [
    ("patch", "1.2.10"), ("minor", "1.3.0"), ("major", "2.0.0"), ("all", "v2.1.0-beta.2")])
def test_semver_levels(level, expected):
    assert decide(SemverPolicy(level), "1.2.3") == expected


@pytest.mark.parametrize("level,within", [("patch", "1.2.10"), ("minor", "1.3.0"), ("major", "1.3.0"),
                                          ("all", "1.4.0-rc.1")])
def test_semver_splits_the_running_major_from_the_next_one(level, within):
    policy, running, offer = SemverPolicy(level), Running("1.2.3"), Offer(tags=TAGS)
    assert policy.decide(running, offer, same_major=True).tag == within
    beyond = policy.next_major(running, offer)
    assert beyond.major and beyond.tag == ("v2.1.0-beta.2" if level == "all" else "2.0.0")
    assert policy.next_major(running, offer, skip={"2.0.0", "v2.1.0-beta.2"}) is None
    assert policy.next_major(Running("2.0.0"), offer) is None


def test_semver_prereleases_only_when_asked():
    assert decide(SemverPolicy("minor"), "1.3.0") is None
    assert decide(SemverPolicy("minor", prereleases=True), "1.3.0") == "1.4.0-rc.1"


def test_semver_never_downgrades_and_needs_a_baseline():
    assert decide(SemverPolicy("major"), "2.0.0", tags=("1.9.9", "2.0.0", "0.1.0")) is None
    assert decide(SemverPolicy("major"), "latest") is None
    assert decide(SemverPolicy("major"), None) is None


def test_semver_marks_major_moves_and_skips_rejected():
    move = SemverPolicy("major").decide(Running("1.2.3"), Offer(tags=TAGS))
    assert move.tag == "2.0.0" and move.major
    assert decide(SemverPolicy("major"), "1.2.3", skip={"2.0.0"}) == "1.3.0"
    minor = SemverPolicy("minor").decide(Running("1.2.3"), Offer(tags=TAGS))
    assert not minor.major


def test_rollback_is_a_newer_version_and_flows():
    # 1.3.1 is a rollback built from an older commit: by version it is newer, so it moves.
    assert decide(SemverPolicy("patch"), "1.3.0", tags=("1.3.0", "1.3.1")) == "1.3.1"


def test_digest_follows_the_tag():
    p = DigestPolicy("staging")
    offer = Offer(digests=(("staging", "sha256:bbb"),))
    assert p.decide(Running("staging", "sha256:aaa"), offer).ref == "staging@sha256:bbb"
    assert p.decide(Running("staging", "sha256:bbb"), offer) is None
    assert p.decide(Running("staging", "sha256:aaa"), Offer()) is None  # tag gone: no move
    assert p.decide(Running("staging", "sha256:aaa"), offer, skip={"staging@sha256:bbb"}) is None
    assert p.mutable_tags == ("staging",) and not p.lists_tags


def test_glob_orders_naturally_and_never_downgrades():
    tags = ("build-9", "build-10", "build-2", "other-99")
    assert decide(GlobPolicy("build-*"), "build-9", tags) == "build-10"
    assert decide(GlobPolicy("build-*"), "build-10", tags) is None
    assert decide(GlobPolicy("build-*"), "build-11", tags) is None


def test_regex_orders_by_version_group():
    tags = ("release-1.9.0", "release-1.10.0", "release-2.0.0-rc.1", "nightly-5")
    p = RegexPolicy(r"release-(?P<version>.+)")
    assert decide(p, "release-1.9.0", tags) == "release-1.10.0"
    assert decide(RegexPolicy(r"release-(.+)", prereleases=True), "release-1.9.0", tags) == "release-2.0.0-rc.1"
    assert decide(p, "release-1.10.0", tags) is None


def test_image_ref_round_trips():
    r = ImageRef.parse("127.0.0.1:5000/game/server:staging@sha256:abc")
    assert (r.repository, r.tag, r.digest) == ("127.0.0.1:5000/game/server", "staging", "sha256:abc")
    assert str(r) == "127.0.0.1:5000/game/server:staging@sha256:abc" and r.ref == "staging@sha256:abc"
    assert ImageRef.parse("127.0.0.1:5000/x").tag is None


def test_steps_and_batches():
    assert step_targets([1, "50%", "100%"], 10) == [1, 5, 10]
    assert step_targets([1, "10%"], 4) == [1, 4]
    assert step_targets(["100%"], 0) == [0]
    assert resolve("25%", 10, round_up=False) == 2 and resolve("25%", 10) == 3
    servers = [Server("a", priority=1), Server("b", priority=5), Server("c", priority=3, busy=True),
               Server("d", priority=2, ready=False)]
    assert [s.name for s in order(servers, high_first=True)] == ["b", "c", "d", "a"]
    # one server is down already: with max_unavailable 2 only one more may go
    batch = next_batch(servers, want=3, max_unavailable=2, skip_busy=True, high_first=True)
    assert [s.name for s in batch] == ["b"]
    batch = next_batch(servers, want=3, max_unavailable=4, skip_busy=False, high_first=False)
    assert [s.name for s in batch] == ["a", "c", "b"]  # low-first, d is down


def _cfg(deployment: dict) -> dict:
    return {"registry": {"url": "127.0.0.1:5000"}, "updates": {"deployments": [deployment]}}


BASE = {"name": "game", "image": "127.0.0.1:5000/game", "policy": "minor",
        "target": {"docker": {"container": "game"}}}


@pytest.mark.parametrize("change,key,words", [
    ({"policy": "digest"}, "updates.deployments[0]", "needs 'tag'"),
    ({"policy": "sometimes"}, "updates.deployments[0].policy", "digest"),
    ({"approval": "maybe"}, "updates.deployments[0].approval", "none"),
    ({"image": "127.0.0.1:5000/game:1.0"}, "updates.deployments[0].image", "without a tag"),
    ({"target": {}}, "updates.deployments[0].target", "exactly one"),
    ({"target": {"docker": {"container": "g", "extra": 1}}}, "updates.deployments[0].target.docker.extra",
     "unknown key"),
    ({"rollout": {"steps": ["150%"]}, "target": {"kubernetes": {"kind": "GameServerSet", "name": "g",
                                                               "container": "c"}}},
     "updates.deployments[0].rollout.steps", "percentage"),
    ({"reload": {}}, "updates.deployments[0].reload", "exactly one"),
    ({"policy": "regex", "pattern": "("}, "updates.deployments[0]", "regular expression"),
    ({"policy": "digest", "tag": "staging", "approval": "major"}, "updates.deployments[0]",
     "needs a semver policy"),
])
def test_settings_errors_name_the_key(change, key, words):
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg({**BASE, **change}), file="t.yaml", env={})
    assert err.value.key == key, str(err.value)
    assert words in str(err.value)


def test_settings_defaults():
    cfg = parse_config(_cfg(BASE), file="t.yaml", env={})
    d = cfg.updates.deployments[0]
    assert d.approval == "none" and d.target.kind == "docker" and cfg.updates.interval == 60
    assert (d.registry_host, d.repository) == ("127.0.0.1:5000", "game")


def test_notify_events_filter():
    cfg = parse_config({"registry": {"url": "r:5000"}, "notify": {"webhooks": [
        {"url": "http://x/hook", "events": ["update.", "approval.requested"]}]}}, file="t", env={})
    hook = cfg.notify.webhooks[0]
    assert hook.wants("update.failed") and hook.wants("approval.requested") and not hook.wants("build.x")
    with pytest.raises(ConfigError) as err:
        parse_config({"registry": {"url": "r:5000"}, "notify": {"webhooks": [{"url": "ftp://x"}]}},
                     file="t", env={})
    assert err.value.key == "notify.webhooks[0].url"


def test_run_loop_gets_one_update_job(tmp_path):
    from poller.runtime import Runtime
    from poller.store import Store

    cfg = parse_config({**_cfg(BASE), "store": {"path": str(tmp_path / "s.db")}}, file="t", env={})
    [(job_id, interval, fn)] = Runtime(cfg).periodic_jobs()
    assert (job_id, interval) == ("updates", 60) and callable(fn)
    empty = parse_config({"registry": {"url": "r:5000"}}, file="t", env={})
    assert Runtime(empty, store=Store(tmp_path / "s.db")).periodic_jobs() == []


def test_notifier_never_raises_into_the_caller():
    from poller.notify import Notifier

    cfg = parse_config({"registry": {"url": "r:5000"}, "notify": {"webhooks": [
        {"url": "http://127.0.0.1:9/unreachable", "timeout": 0.5}]}}, file="t", env={})
    assert Notifier(cfg.notify).send("update.failed", "x", deployment="d") == 0


class MemoryTarget:
    """The Target protocol's in-memory double (the engine is under test, not a target)."""

    description = "memory"

    def __init__(self, image: str):
        from poller.targets.base import ImageRef

        self.ref = ImageRef.parse(image)
        self.applied: list[str] = []

    def current(self):
        return self.ref

    def apply(self, image):
        from poller.targets.base import Applied

        self.ref = image
        self.applied.append(str(image))
        return Applied({})


def test_expired_approval_is_not_proposed_again_and_approval_all_covers_digests(tmp_path):
    from poller.approvals import ApprovalQueue
    from poller.store import Store
    from poller.updater.engine import UpdateEngine

    now = [1000.0]
    dep = {**BASE, "approval": "all", "approval_ttl": 60}
    cfg = parse_config(_cfg(dep), file="t", env={})

    class Watcher:
        def want(self, **kw):
            pass

    class Targets:
        def __init__(self):
            self.t = MemoryTarget("127.0.0.1:5000/game:1.0.0")

        def target(self, d):
            return self.t

    targets = Targets()
    store = Store(tmp_path / "s.db")
    eng = UpdateEngine(cfg.updates, store, watchers={BASE["image"]: Watcher()}, targets=targets,
                       clock=lambda: now[0])
    t = eng.tracked[0]
    offer = Offer(tags=("1.0.0", "1.1.0", "1.2.0"))
    assert eng.check(t, offer).action == "waiting-approval"      # approval: all, even a minor
    now[0] += 61                                                   # nobody decided in time
    o = eng.check(t, offer)
    assert (o.action, o.to_ref) == ("waiting-approval", "1.1.0")   # 1.2.0 expired: not proposed again
    assert [a.status for a in ApprovalQueue(store, clock=lambda: now[0]).list(status=None)] == ["expired", "pending"]
    assert targets.t.applied == []
