"""Rollout state in the store: which servers are done, reload results, pause/abort.

A person pauses, resumes or aborts a rollout from the CLI or the API (another process);
the running rollout reads the state between batches, so the decision takes effect at the
next step boundary and survives restarts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from poller.errors import Conflict, NotFound
from poller.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment  TEXT NOT NULL,
    to_ref      TEXT NOT NULL,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL,   -- running | paused | aborted | succeeded | failed
    step        INTEGER NOT NULL DEFAULT 0,
    message     TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    UNIQUE (deployment, to_ref)
);
CREATE TABLE IF NOT EXISTS rollout_servers (
    rollout_id      INTEGER NOT NULL,
    server          TEXT NOT NULL,
    step            INTEGER,
    updated_at      REAL,
    reload_status   TEXT,        -- ok | failed | NULL (no reload configured / not yet)
    reload_attempts INTEGER NOT NULL DEFAULT 0,
    reload_detail   TEXT,
    PRIMARY KEY (rollout_id, server)
);
"""

ACTIVE = ("running", "paused")


class NoActiveRollout(Conflict):
    pass


@dataclass(frozen=True)
class RolloutRecord:
    id: int
    deployment: str
    to_ref: str
    image: str
    state: str
    step: int
    message: str | None
    created_at: float
    updated_at: float


class RolloutControl:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        store.ensure_schema(SCHEMA)

    def _rec(self, row) -> RolloutRecord:
        if not row:   # only rows this class wrote are read back: a missing one is a bug upstream
            raise NotFound("no such rollout")
        return RolloutRecord(**dict(row))

    def start(self, deployment: str, to_ref: str, image: str) -> RolloutRecord:
        """The rollout of ``to_ref`` (created once; a later call returns it as it stands)."""
        now = self.clock()
        self.store.execute(
            "INSERT OR IGNORE INTO rollouts (deployment, to_ref, image, state, created_at, updated_at)"
            " VALUES (?, ?, ?, 'running', ?, ?)", (deployment, to_ref, image, now, now))
        return self.get(deployment, to_ref)

    def get(self, deployment: str, to_ref: str) -> RolloutRecord:
        return self._rec(self.store.execute(
            "SELECT * FROM rollouts WHERE deployment=? AND to_ref=?", (deployment, to_ref)).fetchone())

    def by_id(self, rollout_id: int) -> RolloutRecord:
        return self._rec(self.store.execute("SELECT * FROM rollouts WHERE id=?", (rollout_id,)).fetchone())

    def active(self, deployment: str | None = None) -> list[RolloutRecord]:
        sql = "SELECT * FROM rollouts WHERE state IN ('running', 'paused')"
        params: tuple = ()
        if deployment:
            sql += " AND deployment=?"
            params = (deployment,)
        return [self._rec(r) for r in self.store.execute(sql + " ORDER BY id", params).fetchall()]

    def recent(self, limit: int = 20) -> list[RolloutRecord]:
        return [self._rec(r) for r in self.store.execute(
            "SELECT * FROM rollouts ORDER BY id DESC LIMIT ?", (limit,)).fetchall()]

    def set_state(self, rollout_id: int, state: str, *, message: str | None = None,
                  step: int | None = None) -> None:
        self.store.execute(
            "UPDATE rollouts SET state=?, message=COALESCE(?, message), step=COALESCE(?, step),"
            " updated_at=? WHERE id=?", (state, message, step, self.clock(), rollout_id))

    def set_step(self, rollout_id: int, step: int) -> None:
        self.store.execute("UPDATE rollouts SET step=?, updated_at=? WHERE id=?",
                           (step, self.clock(), rollout_id))

    # -- people ---------------------------------------------------------------------------
    def _decide(self, deployment: str, state: str, allowed: tuple[str, ...], by: str) -> RolloutRecord:
        current = [r for r in self.active(deployment) if r.state in allowed]
        if not current:
            raise NoActiveRollout(f"no rollout of {deployment} that can be set {state}")
        rec = current[-1]
        self.set_state(rec.id, state, message=f"{state} by {by}")
        self.store.record_event("rollout", deployment, id=rec.id, to_ref=rec.to_ref, state=state, by=by)
        return self.by_id(rec.id)

    def pause(self, deployment: str, *, by: str = "cli") -> RolloutRecord:
        return self._decide(deployment, "paused", ("running",), by)

    def resume(self, deployment: str, *, by: str = "cli") -> RolloutRecord:
        return self._decide(deployment, "running", ("paused",), by)

    def abort(self, deployment: str, *, by: str = "cli") -> RolloutRecord:
        return self._decide(deployment, "aborted", ACTIVE, by)

    # -- servers --------------------------------------------------------------------------
    def server_updated(self, rollout_id: int, server: str, step: int) -> None:
        self.store.execute(
            "INSERT INTO rollout_servers (rollout_id, server, step, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(rollout_id, server) DO UPDATE SET step=COALESCE(rollout_servers.step,"
            " excluded.step), updated_at=COALESCE(rollout_servers.updated_at, excluded.updated_at)",
            (rollout_id, server, step, self.clock()))

    def reload_result(self, rollout_id: int, server: str, *, ok: bool, attempts: int, detail: str) -> None:
        self.store.execute(
            "INSERT INTO rollout_servers (rollout_id, server, reload_status, reload_attempts, reload_detail)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(rollout_id, server) DO UPDATE SET"
            " reload_status=excluded.reload_status, reload_attempts=rollout_servers.reload_attempts"
            " + excluded.reload_attempts, reload_detail=excluded.reload_detail",
            (rollout_id, server, "ok" if ok else "failed", attempts, detail))

    def servers(self, rollout_id: int) -> list[dict]:
        return [dict(r) for r in self.store.execute(
            "SELECT * FROM rollout_servers WHERE rollout_id=? ORDER BY updated_at, server",
            (rollout_id,)).fetchall()]

    def reloaded(self, rollout_id: int, server: str) -> bool:
        row = self.store.execute("SELECT reload_status FROM rollout_servers WHERE rollout_id=? AND server=?",
                                 (rollout_id, server)).fetchone()
        return row is not None and row["reload_status"] == "ok"


def as_dict(rec: RolloutRecord) -> dict:
    return json.loads(json.dumps(rec.__dict__))
