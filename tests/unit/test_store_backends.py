"""The store on both backends (a SQLite file, a real PostgreSQL), its migrations, and the upgrade
of a store written by the previous main's code."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from poller.approvals import ApprovalQueue
from poller.errors import StoreError
from poller.rollout.control import RolloutControl
from poller.store import Store, head_revision
from poller.updater.history import UpdateHistory

ROOT = Path(__file__).resolve().parents[2]
#: main before the store had migrations: its code writes the store the upgrade test starts from.
PREVIOUS_MAIN = "75a95d4"


def test_builds_sources_and_events_round_trip(store_target):
    store = Store(store_target)
    assert store.revision == head_revision()
    first = store.start_build(source="gs", image="reg/gs", ref="tag:v1", kind="release",
                              sha="a" * 40, tags=["v1"], pid=os.getpid())
    second = store.start_build(source="gs", image="reg/gs", ref="tag:v2", kind="release",
                               sha="b" * 40, tags=["v2", "latest"])
    assert second == first + 1
    store.finish_build(first, status="failed", error="boom", log="step 1\n")
    store.finish_build(second, status="upstream-error", error="registry 503")
    assert [b.status for b in store.builds()] == ["upstream-error", "failed"]
    assert store.get_build(second).tags == ["v2", "latest"]
    assert store.get_build(first).log == "step 1\n"
    assert store.failures_since_success(image="reg/gs", ref="tag:v1", sha="a" * 40)[0] == 1
    store.record_poll("gs", head="c" * 40, tags={"v1": "a" * 40})
    store.record_poll("gs", error="git said no")
    [src] = store.sources()
    assert (src["head"], src["tags"], src["last_error"]) == ("c" * 40, {"v1": "a" * 40}, "git said no")
    store.record_event("deploy", "gs", percent="100%", who="ci")
    [ev] = store.events()
    assert ev["detail"] == {"percent": "100%", "who": "ci"}
    store.close()


def test_one_build_claim_per_image_and_ref(store_target):
    store = Store(store_target)
    alive = lambda host, pid: True
    kw = {"image": "reg/gs", "ref": "branch:master", "host": "h", "pid": 1, "ttl": 30,
          "holder_alive": alive}
    assert store.claim_build(sha="a", holder="one", **kw) is None
    assert store.claim_build(sha="b", holder="two", **kw)["holder"] == "one"
    store.release_claim(image="reg/gs", ref="branch:master", holder="one")
    assert store.claim_build(sha="b", holder="two", **kw) is None
    assert store.live_claim(image="reg/gs", ref="branch:master", holder_alive=alive)["sha"] == "b"
    store.close()


def test_a_build_stopped_after_its_push_is_settled_succeeded_once(store_target):
    store = Store(store_target)
    kw = {"image": "r/app", "ref": "tag:v1", "sha": "a" * 40}
    assert store.settle_pushed(**kw, digest="sha256:1") is None  # no build at all
    bid = store.start_build(source="app", kind="release", tags=["1"], pid=1, **kw)
    store.finish_build(bid, status="interrupted", error="the process running this build stopped")
    assert store.settle_pushed(**kw, digest="sha256:1") == bid
    rec = store.get_build(bid)
    assert (rec.status, rec.digest, rec.error) == ("succeeded", "sha256:1", None)
    assert "found it in the registry" in rec.log
    assert store.settle_pushed(**kw, digest="sha256:1") is None  # already succeeded
    other = store.start_build(source="app", kind="release", tags=["1"], pid=1,
                              **{**kw, "sha": "b" * 40})
    store.finish_build(other, status="failed", error="broken")
    assert store.settle_pushed(**{**kw, "sha": "b" * 40}, digest="sha256:2") is None  # a failure stays


def test_approvals_pins_and_rollouts_round_trip(store_target):
    store = Store(store_target)
    queue = ApprovalQueue(store)
    req = queue.request(kind="chart", subject="game", to_version="2.0.0", from_version="1.0.0")
    assert queue.request(kind="chart", subject="game", to_version="2.0.0").id == req.id
    assert queue.approve(req.id, by="ana").status == "approved"
    history = UpdateHistory(store)
    history.pin("game", "1.2.3", by="ana")
    assert history.pinned("game") == ("1.2.3", "ana")
    upd = history.start(deployment="game", image="reg/gs", from_ref="1.0", to_ref="1.2.3",
                        policy="semver", reason="pinned", approved_by="pin:ana")
    assert history.finish(upd, ok=True, note="50%").detail == {"note": "50%"}
    assert [u.id for u in history.list(deployment="game")] == [upd]
    rollouts = RolloutControl(store)
    r = rollouts.start("game", "1.2.3", "reg/gs")
    assert rollouts.start("game", "1.2.3", "reg/gs").id == r.id
    assert [x.id for x in rollouts.active("game")] == [r.id]
    store.close()


def test_a_store_newer_than_the_poller_is_refused_in_one_line(store_target, tmp_path):
    Store(store_target).execute("UPDATE alembic_version SET version_num='9999'")
    with pytest.raises(StoreError, match="newer Slipway .*9999.*run a newer poller"):
        Store(store_target)
    cfg = tmp_path / "slipway.yaml"
    cfg.write_text(yaml.safe_dump({
        "registry": {"url": "127.0.0.1:5000", "insecure": True}, "store": {"url": store_target},
        "state_dir": str(tmp_path / "state"), "api": {"listen": None}, "sources": []}))
    for command in (["status"], ["once"], ["store", "upgrade"]):
        res = subprocess.run([sys.executable, "-m", "poller", *command, "--config", str(cfg)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        [line] = res.stderr.strip().splitlines()
        assert "newer Slipway" in line and "9999" in line


_WRITE_OLD_STORE = """
import sys
from poller.store import Store
from poller.approvals import ApprovalQueue
from poller.updater.history import UpdateHistory
from poller.charts import watcher
from poller.rollout.control import RolloutControl
store = Store(sys.argv[1])
RolloutControl(store).start("game", "1.2.3", "reg/gs")
bid = store.start_build(source="gs", image="reg/gs", ref="tag:v1", kind="release", sha="a" * 40,
                        tags=["v1"])
store.finish_build(bid, status="upstream-error", error="registry 503", log="built\\n")
queue = ApprovalQueue(store)
appr = queue.request(kind="chart", subject="game", to_version="2.0.0", from_version="1.0.0")
queue.approve(appr.id, by="ana")
UpdateHistory(store).pin("game", "1.2.3", by="ana")
store.ensure_schema(watcher._SCHEMA)
store.execute("INSERT INTO chart_applies (repo, chart, version, channel, environment, job,"
              " approval_id, at) VALUES ('charts', 'game', '2.0.0', 'release', 'prod', 'job-1', ?, 1.0)",
              (appr.id,))
store.claim_build(image="reg/gs", ref="tag:v2", sha="b" * 40, holder="h", host="h", pid=1,
                  ttl=30, holder_alive=lambda h, p: True)
"""


def _previous_main(tmp_path: Path) -> Path:
    out = tmp_path / "previous-main"
    data = subprocess.run(["git", "archive", "--format=tar", PREVIOUS_MAIN, "poller"], cwd=ROOT,
                          capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(out, filter="data")
    return out


def _schema(path: Path) -> dict:
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'alembic_version'")]
    out = {t: [tuple(r) for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    out["indexes"] = sorted(r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))
    conn.close()
    return out


def test_a_store_written_by_the_previous_main_is_upgraded_keeping_its_history(tmp_path):
    old = tmp_path / "old.db"
    subprocess.run([sys.executable, "-c", _WRITE_OLD_STORE, str(old)], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(_previous_main(tmp_path))}, cwd=tmp_path)
    before = _schema(old)
    cfg = tmp_path / "slipway.yaml"
    cfg.write_text(yaml.safe_dump({
        "registry": {"url": "127.0.0.1:5000", "insecure": True}, "store": {"path": str(old)},
        "state_dir": str(tmp_path / "state"), "api": {"listen": None}, "sources": []}))
    res = subprocess.run([sys.executable, "-m", "poller", "store", "upgrade", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert f"schema none -> {head_revision()}" in res.stdout

    store = Store(old)
    assert store.revision == head_revision()
    [build] = store.builds()
    assert (build.status, build.error, build.log) == ("upstream-error", "registry 503", "built\n")
    [appr] = ApprovalQueue(store).list(status=None)
    assert (appr.status, appr.decided_by, appr.to_version) == ("approved", "ana", "2.0.0")
    assert UpdateHistory(store).pinned("game") == ("1.2.3", "ana")
    assert RolloutControl(store).get("game", "1.2.3").state == "running"
    [applied] = store.execute("SELECT * FROM chart_applies").fetchall()
    assert (applied["version"], applied["approval_id"]) == ("2.0.0", appr.id)
    assert store.live_claim(image="reg/gs", ref="tag:v2", holder_alive=lambda h, p: True)["sha"] == "b" * 40
    assert store.start_build(source="gs", image="reg/gs", ref="tag:v3", kind="release",
                             sha="c" * 40, tags=["v3"]) == build.id + 1
    store.close()

    # The baseline migration reproduces the old schema exactly: a fresh store has the same
    # tables, columns (types, NOT NULL, defaults, keys) and indexes.
    fresh = tmp_path / "fresh.db"
    Store(fresh).close()
    now = _schema(fresh)
    added = now["builds"][len(before["builds"]):]
    assert [c[1:4] for c in added] == [("host", "TEXT", 0)]  # revision 0004
    assert {t: now[t] for t in before} == {**before, "builds": before["builds"] + added}
    assert set(now) - set(before) == {"leader_triggers", "staging_holds", "chart_index_state"}
    # 0005's tables are exactly what their domains' own DDL makes.
    from poller import rollback
    from poller.charts import watcher

    plain = tmp_path / "plain.db"
    conn = sqlite3.connect(plain)
    conn.executescript(rollback._SCHEMA + watcher._SCHEMA)
    conn.close()
    domain = _schema(plain)
    assert {t: now[t] for t in ("staging_holds", "chart_index_state")} == {
        t: domain[t] for t in ("staging_holds", "chart_index_state")}


def test_a_build_running_on_another_host_is_interrupted_only_when_its_claim_lapses(store_target):
    store = Store(store_target)
    bid = store.start_build(source="gs", image="reg/gs", ref="tag:v1", kind="release",
                            sha="a" * 40, tags=["v1"], pid=os.getpid())
    store.execute("UPDATE builds SET host='builder-7', pid=1 WHERE id=?", (bid,))
    store.claim_build(image="reg/gs", ref="tag:v1", sha="a" * 40, holder="builder-7:1:x",
                      host="builder-7", pid=1, ttl=60, holder_alive=lambda h, p: True)
    # pid 1 is no process of this machine's poller, but the build is another host's: kept.
    assert store.mark_interrupted(older_than_pid_alive=lambda pid: False) == 0
    assert store.get_build(bid).status == "running"
    store.execute("UPDATE build_claims SET expires_at=0")
    assert store.mark_interrupted(older_than_pid_alive=lambda pid: False) == 1
    assert store.get_build(bid).status == "interrupted"
    store.close()
