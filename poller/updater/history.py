"""The updater's own tables: the audit of every update, pins, and what each image watcher saw.

History only: what runs is read from the target each cycle, never from here.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from poller.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment   TEXT NOT NULL,
    image        TEXT NOT NULL,
    from_ref     TEXT,            -- '1.3.0' or 'staging@sha256:..' as the target ran it
    to_ref       TEXT NOT NULL,
    policy       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    approved_by  TEXT,            -- NULL: no approval needed; 'pin:<who>' for a pin
    status       TEXT NOT NULL,   -- running | succeeded | failed
    error        TEXT,
    detail       TEXT NOT NULL DEFAULT '{}',
    started_at   REAL NOT NULL,
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS updates_by_deployment ON updates (deployment, to_ref, id);
CREATE TABLE IF NOT EXISTS update_pins (
    deployment   TEXT PRIMARY KEY,
    version      TEXT NOT NULL,
    pinned_by    TEXT NOT NULL,
    pinned_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS watched_images (
    image        TEXT PRIMARY KEY,
    last_check   REAL,
    last_ok      REAL,
    last_error   TEXT,
    failures     INTEGER NOT NULL DEFAULT 0,
    retry_at     REAL,
    tags         INTEGER,
    digests      TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class UpdateRecord:
    id: int
    deployment: str
    image: str
    from_ref: str | None
    to_ref: str
    policy: str
    reason: str
    approved_by: str | None
    status: str
    error: str | None
    detail: dict
    started_at: float
    finished_at: float | None


class UpdateHistory:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        store.ensure_schema(SCHEMA)

    # -- audit ------------------------------------------------------------------------
    def start(self, *, deployment: str, image: str, from_ref: str | None, to_ref: str, policy: str,
              reason: str, approved_by: str | None) -> int:
        cur = self.store.execute(
            "INSERT INTO updates (deployment, image, from_ref, to_ref, policy, reason, approved_by,"
            " status, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            (deployment, image, from_ref, to_ref, policy, reason, approved_by, self.clock()))
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish(self, update_id: int, *, ok: bool, error: str | None = None, **detail: Any) -> UpdateRecord:
        self.store.execute(
            "UPDATE updates SET status=?, error=?, detail=?, finished_at=? WHERE id=?",
            ("succeeded" if ok else "failed", error, json.dumps(detail, default=str), self.clock(),
             update_id))
        rec = self.get(update_id)
        self.store.record_event("update", rec.deployment, id=rec.id, image=rec.image,
                                from_ref=rec.from_ref, to_ref=rec.to_ref, policy=rec.policy,
                                reason=rec.reason, approved_by=rec.approved_by, result=rec.status,
                                error=rec.error)
        return rec

    def abandon(self, update_id: int, *, reason: str) -> None:
        """An update that was never applied (the target changed under it and the decision is
        taken again): not a failure, so the version stays eligible."""
        self.store.execute("UPDATE updates SET status='abandoned', error=?, finished_at=? WHERE id=?",
                           (reason, self.clock(), update_id))

    def _rec(self, row) -> UpdateRecord:
        d = dict(row)
        d["detail"] = json.loads(d["detail"] or "{}")
        return UpdateRecord(**d)

    def get(self, update_id: int) -> UpdateRecord:
        return self._rec(self.store.execute("SELECT * FROM updates WHERE id=?", (update_id,)).fetchone())

    def list(self, *, deployment: str | None = None, limit: int = 50) -> list[UpdateRecord]:
        sql, params = "SELECT * FROM updates", []
        if deployment:
            sql += " WHERE deployment=?"
            params.append(deployment)
        rows = self.store.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [self._rec(r) for r in rows]

    def failed_before(self, deployment: str, to_ref: str) -> bool:
        """A failed update to ``to_ref`` is not retried in a loop: a newer version is needed."""
        row = self.store.execute(
            "SELECT status FROM updates WHERE deployment=? AND to_ref=? ORDER BY id DESC LIMIT 1",
            (deployment, to_ref)).fetchone()
        return row is not None and row["status"] == "failed"

    # -- pins ---------------------------------------------------------------------------
    def pin(self, deployment: str, version: str, *, by: str) -> None:
        self.store.execute(
            "INSERT INTO update_pins (deployment, version, pinned_by, pinned_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(deployment) DO UPDATE SET version=excluded.version,"
            " pinned_by=excluded.pinned_by, pinned_at=excluded.pinned_at",
            (deployment, version, by, self.clock()))
        self.store.record_event("pin", deployment, version=version, by=by)

    def unpin(self, deployment: str, *, by: str) -> bool:
        cur = self.store.execute("DELETE FROM update_pins WHERE deployment=?", (deployment,))
        if cur.rowcount:
            self.store.record_event("unpin", deployment, by=by)
        return bool(cur.rowcount)

    def pinned(self, deployment: str) -> tuple[str, str] | None:
        row = self.store.execute("SELECT version, pinned_by FROM update_pins WHERE deployment=?",
                                 (deployment,)).fetchone()
        return (row["version"], row["pinned_by"]) if row else None

    def pins(self) -> dict[str, tuple[str, str]]:
        """Every pin, by deployment (one query: an update cycle reads them once)."""
        rows = self.store.execute("SELECT deployment, version, pinned_by FROM update_pins").fetchall()
        return {r["deployment"]: (r["version"], r["pinned_by"]) for r in rows}

    # -- watchers -----------------------------------------------------------------------
    def watched_ok(self, checks: builtins.list[tuple[str, int | None, dict]]) -> None:
        """Record successful checks ``(image, tags, digests)`` of many images in one statement
        (what :meth:`watched` with ``ok=True`` does for one)."""
        if not checks:
            return
        now = self.clock()
        with self.store.transaction() as tx:   # executemany: one round of the driver for all
            tx.execute(
                "INSERT INTO watched_images (image, last_check, last_ok, failures, tags, digests)"
                " VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(image) DO UPDATE SET"
                " last_check=excluded.last_check, last_ok=excluded.last_ok, last_error=NULL,"
                " failures=0, retry_at=NULL, tags=excluded.tags, digests=excluded.digests",
                [(image, now, now, tags, json.dumps(digests or {})) for image, tags, digests in checks])

    def watched(self, image: str, *, ok: bool, error: str | None = None, retry_at: float | None = None,
                tags: int | None = None, digests: dict | None = None) -> int:
        """Record one check of ``image``; returns the consecutive failures so far."""
        now = self.clock()
        if ok:
            self.store.execute(
                "INSERT INTO watched_images (image, last_check, last_ok, failures, tags, digests)"
                " VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(image) DO UPDATE SET"
                " last_check=excluded.last_check, last_ok=excluded.last_ok, last_error=NULL,"
                " failures=0, retry_at=NULL, tags=excluded.tags, digests=excluded.digests",
                (image, now, now, tags, json.dumps(digests or {})))
            return 0
        self.store.execute(
            "INSERT INTO watched_images (image, last_check, last_error, failures, retry_at)"
            " VALUES (?, ?, ?, 1, ?) ON CONFLICT(image) DO UPDATE SET last_check=excluded.last_check,"
            " last_error=excluded.last_error, failures=failures + 1, retry_at=excluded.retry_at",
            (image, now, error, retry_at))
        row = self.store.execute("SELECT failures FROM watched_images WHERE image=?", (image,)).fetchone()
        assert row is not None   # written just above, in the same call
        return int(row["failures"])

    def set_retry(self, image: str, retry_at: float) -> None:
        self.store.execute("UPDATE watched_images SET retry_at=? WHERE image=?", (retry_at, image))

    def watcher_state(self, image: str) -> dict | None:
        row = self.store.execute("SELECT * FROM watched_images WHERE image=?", (image,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["digests"] = json.loads(d["digests"] or "{}")
        return d

    def retry_times(self) -> dict[str, float]:
        """image -> ``retry_at`` of every watcher backing off (one query per cycle)."""
        rows = self.store.execute("SELECT image, retry_at FROM watched_images WHERE retry_at IS NOT NULL").fetchall()
        return {r["image"]: r["retry_at"] for r in rows}

    def watchers(self) -> builtins.list[dict]:
        rows = self.store.execute("SELECT * FROM watched_images ORDER BY image").fetchall()
        return [{**dict(r), "digests": json.loads(r["digests"] or "{}")} for r in rows]
