"""History and audit in SQLite. Never the source of truth: the registry and git are.

One :class:`Store` per process; it is safe to share between threads (one connection per
thread, WAL mode). Other domains (approvals, charts, updates) add their own tables with
:meth:`Store.ensure_schema` instead of reaching into this module.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    image       TEXT NOT NULL,
    ref         TEXT NOT NULL,      -- 'branch:master' or 'tag:v1.2.3'
    kind        TEXT NOT NULL,      -- staging | release | prerelease
    sha         TEXT NOT NULL,
    tags        TEXT NOT NULL,      -- JSON list of image tags
    digest      TEXT,
    status      TEXT NOT NULL,      -- running | succeeded | failed | interrupted
    error       TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    duration    REAL,
    log         TEXT NOT NULL DEFAULT '',
    pid         INTEGER
);
CREATE INDEX IF NOT EXISTS builds_by_key ON builds (image, ref, sha, id);
CREATE TABLE IF NOT EXISTS sources (
    name        TEXT PRIMARY KEY,
    head        TEXT,
    tags        TEXT NOT NULL DEFAULT '{}',
    last_poll   REAL,
    last_ok     REAL,
    last_error  TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,      -- 'chart' | 'deployment' | ...
    subject     TEXT NOT NULL,      -- what would change (chart name, deployment)
    from_version TEXT,
    to_version  TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL,      -- pending | approved | rejected | expired | applied | superseded
    created_at  REAL NOT NULL,
    decided_at  REAL,
    decided_by  TEXT,
    expires_at  REAL,
    UNIQUE (kind, subject, to_version)
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass
class BuildRecord:
    id: int
    source: str
    image: str
    ref: str
    kind: str
    sha: str
    tags: list[str]
    digest: str | None
    status: str
    error: str | None
    started_at: float
    finished_at: float | None
    duration: float | None
    log: str = field(repr=False, default="")

    def as_dict(self, with_log: bool = False) -> dict[str, Any]:
        d = dict(self.__dict__)
        if not with_log:
            d.pop("log")
        return d


class Store:
    """SQLite-backed history. ``path`` may be ``":memory:"`` only for single-threaded tests."""

    def __init__(self, path: str | Path, *, log_limit: int = 256 * 1024):
        self.path = str(path)
        self.log_limit = log_limit
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.ensure_schema(_SCHEMA)

    # -- plumbing -----------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def ensure_schema(self, script: str) -> None:
        with self._lock:
            self.connection().executescript(script)

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        return self.connection().execute(sql, params)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- builds -------------------------------------------------------------------
    def start_build(self, *, source: str, image: str, ref: str, kind: str, sha: str,
                    tags: list[str], pid: int | None = None) -> int:
        cur = self.execute(
            "INSERT INTO builds (source, image, ref, kind, sha, tags, status, started_at, pid)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            (source, image, ref, kind, sha, json.dumps(tags), time.time(), pid))
        return int(cur.lastrowid)

    def finish_build(self, build_id: int, *, status: str, digest: str | None = None,
                     error: str | None = None, log: str = "") -> None:
        now = time.time()
        if len(log) > self.log_limit:
            log = "[... log truncated ...]\n" + log[-self.log_limit:]
        self.execute(
            "UPDATE builds SET status=?, digest=?, error=?, log=?, finished_at=?,"
            " duration=? - started_at WHERE id=?",
            (status, digest, error, log, now, now, build_id))

    def mark_interrupted(self, *, older_than_pid_alive=None) -> int:
        """Close builds left ``running`` by a process that is gone. Returns how many."""
        rows = self.execute("SELECT id, pid FROM builds WHERE status='running'").fetchall()
        n = 0
        for row in rows:
            alive = older_than_pid_alive(row["pid"]) if older_than_pid_alive else False
            if not alive:
                self.finish_build(row["id"], status="interrupted",
                                  error="the process running this build stopped")
                n += 1
        return n

    def _build(self, row: sqlite3.Row) -> BuildRecord:
        d = dict(row)
        d.pop("pid", None)
        d["tags"] = json.loads(d["tags"])
        return BuildRecord(**d)

    def get_build(self, build_id: int) -> BuildRecord | None:
        row = self.execute("SELECT * FROM builds WHERE id=?", (build_id,)).fetchone()
        return self._build(row) if row else None

    def builds(self, *, source: str | None = None, limit: int = 50) -> list[BuildRecord]:
        if source:
            rows = self.execute("SELECT * FROM builds WHERE source=? ORDER BY id DESC LIMIT ?",
                                (source, limit))
        else:
            rows = self.execute("SELECT * FROM builds ORDER BY id DESC LIMIT ?", (limit,))
        return [self._build(r) for r in rows.fetchall()]

    def failures_since_success(self, *, image: str, ref: str, sha: str) -> tuple[int, float | None]:
        """Consecutive failed builds of exactly this (image, ref, sha), and when the last ended.

        Back-off for a broken commit is derived from this history, so it survives restarts.
        """
        rows = self.execute(
            "SELECT status, finished_at FROM builds WHERE image=? AND ref=? AND sha=?"
            " ORDER BY id DESC LIMIT 50", (image, ref, sha)).fetchall()
        n, last = 0, None
        for row in rows:
            if row["status"] == "failed":
                n += 1
                last = last or row["finished_at"]
            elif row["status"] in ("succeeded",):
                break
        return n, last

    # -- sources ------------------------------------------------------------------
    def record_poll(self, name: str, *, head: str | None = None, tags: dict | None = None,
                    error: str | None = None) -> None:
        now = time.time()
        if error is None:
            self.execute(
                "INSERT INTO sources (name, head, tags, last_poll, last_ok, last_error)"
                " VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(name) DO UPDATE SET head=excluded.head,"
                " tags=excluded.tags, last_poll=excluded.last_poll, last_ok=excluded.last_ok,"
                " last_error=NULL", (name, head, json.dumps(tags or {}), now, now))
        else:
            self.execute(
                "INSERT INTO sources (name, last_poll, last_error) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET last_poll=excluded.last_poll,"
                " last_error=excluded.last_error", (name, now, error))

    def sources(self) -> list[dict[str, Any]]:
        rows = self.execute("SELECT * FROM sources ORDER BY name").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["tags"] = json.loads(d["tags"] or "{}")
            out.append(d)
        return out

    # -- events (audit) -------------------------------------------------------------
    def record_event(self, kind: str, subject: str, **detail: Any) -> None:
        self.execute("INSERT INTO events (at, kind, subject, detail) VALUES (?, ?, ?, ?)",
                     (time.time(), kind, subject, json.dumps(detail, default=str)))

    def events(self, *, kind: str | None = None, limit: int = 100) -> Iterator[dict[str, Any]]:
        sql = "SELECT * FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY id DESC LIMIT ?"
        params = (kind, limit) if kind else (limit,)
        for r in self.execute(sql, params).fetchall():
            d = dict(r)
            d["detail"] = json.loads(d["detail"])
            yield d
