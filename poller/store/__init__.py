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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poller.errors import StoreError
from poller.logs import mask, mask_known, mask_value

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
    status      TEXT NOT NULL,      -- running | succeeded | failed | upstream-error | interrupted
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
CREATE TABLE IF NOT EXISTS build_claims (
    image       TEXT NOT NULL,
    ref         TEXT NOT NULL,
    sha         TEXT NOT NULL,
    holder      TEXT NOT NULL,      -- host:pid:nonce of the process building it
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    expires_at  REAL NOT NULL,      -- renewed while the build runs; a dead holder's lapses
    PRIMARY KEY (image, ref)
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
"""

#: Columns this version reads and writes; a store without them was made by an older Slipway.
_REQUIRED_COLUMNS = {
    "builds": {"id", "source", "image", "ref", "kind", "sha", "tags", "digest", "status", "error",
               "started_at", "finished_at", "duration", "log", "pid"},
    "sources": {"name", "head", "tags", "last_poll", "last_ok", "last_error"},
    "events": {"id", "at", "kind", "subject", "detail"},
}

#: What to do about a store that can't be used. It holds history only (git and the registry
#: are the truth), so moving it aside loses no state that matters.
_MOVE_ASIDE = "move it aside (it holds only history) or set store.path to another file"


def _explain(path: str, exc: Exception) -> StoreError:
    """One line naming the store file, what is wrong with it and what to do."""
    text = str(exc).lower()
    if isinstance(exc, IsADirectoryError) or Path(path).is_dir():
        what = f"is a directory, not a file; set store.path to a file such as {path}/slipway.db"
    elif "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        what = ("is read-only (or its directory is); give the poller's user write access to the "
                "file and its directory")
    elif "not a database" in text:
        what = f"is not a Slipway store (not an SQLite database); {_MOVE_ASIDE}"
    elif "malformed" in text or "corrupt" in text or "disk i/o" in text:
        what = f"is damaged (truncated or corrupt); {_MOVE_ASIDE}"
    elif "unable to open" in text:
        what = "cannot be opened; check that its directory exists and is writable"
    else:
        what = f"cannot be used ({' '.join(str(exc).split())}); {_MOVE_ASIDE}"
    return StoreError(f"store {path} {what}")


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
        self._local = threading.local()
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                if Path(self.path).is_dir():
                    raise IsADirectoryError(self.path)
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.ensure_schema(_SCHEMA)
            self._check()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise _explain(self.path, exc) from None

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

    def _check(self) -> None:
        """Refuse, at open, a store that is damaged, from an older schema, or not writable."""
        conn = self.connection()
        problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
        for table, wanted in _REQUIRED_COLUMNS.items():
            have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
            missing = sorted(wanted - have)
            if missing:
                raise StoreError(f"store {self.path} was made by an older Slipway (table {table} "
                                 f"has no column {', '.join(missing)}); {_MOVE_ASIDE}")
        conn.execute("BEGIN IMMEDIATE")
        try:  # a write that is rolled back: fails at once on a read-only file
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version={int(version)}")
        finally:
            conn.execute("ROLLBACK")

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
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_build(self, build_id: int, *, status: str, digest: str | None = None,
                     error: str | None = None, log: str = "") -> None:
        now = time.time()
        # Build output and errors are masked before they are kept (and again when read, for
        # rows written before a secret was known): a build that prints a secret stores ***.
        log, error = mask(log), (mask(error) if error else error)
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
        if d.get("error"):
            d["error"] = mask(d["error"])
        # Logs were fully masked when written; on the way out only the (cheap) known-secret
        # pass runs again, for rows kept before a secret was configured.
        d["log"] = mask_known(d.get("log") or "")
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
        Builds stopped by an upstream (``upstream-error``) or a crash (``interrupted``) are no
        fault of the commit and are not counted.
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

    # -- build claims (one builder per image and ref across processes) --------------
    def claim_build(self, *, image: str, ref: str, sha: str, holder: str, host: str, pid: int,
                    ttl: float, holder_alive: Callable[[str, int], bool]) -> dict[str, Any] | None:
        """Take the build of ``(image, ref)`` for ``holder``, for ``ttl`` seconds.

        Returns ``None`` when taken, else the live claim that stands in the way. A claim whose
        lease lapsed, or whose holder ``holder_alive(host, pid)`` says is gone (killed
        mid-build), is taken over. The check and the take are one write transaction, so two
        processes never both get it.
        """
        conn = self.connection()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT * FROM build_claims WHERE image=? AND ref=?",
                               (image, ref)).fetchone()
            if (row is not None and row["holder"] != holder and row["expires_at"] > now
                    and holder_alive(row["host"], row["pid"])):
                conn.execute("ROLLBACK")
                return dict(row)
            conn.execute("INSERT OR REPLACE INTO build_claims (image, ref, sha, holder, host, pid,"
                         " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (image, ref, sha, holder, host, pid, now + ttl))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return None

    def live_claim(self, *, image: str, ref: str,
                   holder_alive: Callable[[str, int], bool]) -> dict[str, Any] | None:
        """The claim on ``(image, ref)`` if one is held by a live process, else ``None``."""
        row = self.execute("SELECT * FROM build_claims WHERE image=? AND ref=?",
                           (image, ref)).fetchone()
        if row is None or row["expires_at"] <= time.time() or not holder_alive(row["host"], row["pid"]):
            return None
        return dict(row)

    def renew_claims(self, holder: str, ttl: float) -> None:
        self.execute("UPDATE build_claims SET expires_at=? WHERE holder=?", (time.time() + ttl, holder))

    def release_claim(self, *, image: str, ref: str, holder: str) -> None:
        self.execute("DELETE FROM build_claims WHERE image=? AND ref=? AND holder=?",
                     (image, ref, holder))

    # -- sources ------------------------------------------------------------------
    def record_poll(self, name: str, *, head: str | None = None, tags: dict | None = None,
                    error: str | None = None) -> None:
        now = time.time()
        if error is not None:
            error = mask(error)
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
                     (time.time(), kind, subject, json.dumps(mask_value(detail), default=str)))

    def events(self, *, kind: str | None = None, limit: int = 100) -> Iterator[dict[str, Any]]:
        sql = "SELECT * FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY id DESC LIMIT ?"
        params = (kind, limit) if kind else (limit,)
        for r in self.execute(sql, params).fetchall():
            d = dict(r)
            d["detail"] = json.loads(d["detail"])
            yield d
