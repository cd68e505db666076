from poller.builds.plans import desired_plans
from poller.config import SourceConfig
from poller.sources.base import RefSnapshot

CFG = SourceConfig(name="gs", git={"url": "file:///x"}, branch="master", image="r:5000/gs")


def test_plans_from_refs():
    snap = RefSnapshot(branch="master", head="a" * 40, tags={
        "v1.0.0": "b" * 40, "1.1.0-rc.1": "c" * 40, "latest": "d" * 40, "v1.2": "e" * 40,
        "release-3": "f" * 40, "v1.1.0": "1" * 40})
    plans = desired_plans(CFG, snap)
    assert [(p.ref, p.kind, p.tags) for p in plans] == [
        ("branch:master", "staging", ("sha-aaaaaaaaaaaa", "staging")),
        ("tag:v1.1.0", "release", ("1.1.0",)),
        ("tag:1.1.0-rc.1", "prerelease", ("1.1.0-rc.1",)),
        ("tag:v1.0.0", "release", ("1.0.0",)),
    ]


def test_same_version_twice_keeps_one():
    snap = RefSnapshot(branch="master", head=None, tags={"v1.0.0": "a" * 40, "1.0.0": "b" * 40})
    plans = desired_plans(CFG, snap)
    assert [p.ref for p in plans] == ["tag:1.0.0"]


def test_no_branch_no_staging():
    assert desired_plans(CFG, RefSnapshot(branch="master", head=None)) == []
