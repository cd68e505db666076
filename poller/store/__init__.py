"""History and audit, in SQLite (the embedded default) or PostgreSQL, through SQLAlchemy Core.

Never the source of truth: the registry and git are. The schema is owned by alembic
migrations (``poller/store/migrations``); a store is brought to the newest revision when it is
opened (``poller store upgrade`` does the same ahead of time) and a store written by a newer
Slipway is refused. One :class:`Store` per process; it is safe to share between threads (a
connection pool; WAL mode on SQLite).

Callers hand :meth:`Store.execute` SQL with ``?`` placeholders; on PostgreSQL it is rewritten
to the driver's style (``%s``) and ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``.
New tables go in a new migration, not in :meth:`Store.ensure_schema` (kept for SQLite only).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import StaticPool

from poller.errors import StoreError
from poller.logs import mask, mask_known, mask_value

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



def _explain(path: str, exc: Exception, *, pg: bool = False) -> StoreError:
    """One line naming the store file (or URL, password hidden), what is wrong and what to do."""
    text = str(exc).lower()
    if pg:
        return StoreError(f"store {path} cannot be used ({mask(' '.join(str(exc).split()))}); "
                          "check store.url and that the PostgreSQL server answers")
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


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The PostgreSQL advisory lock (transaction-scoped) that serialises migrations and claims.
_MIGRATE_LOCK, _CLAIM_LOCK = 0x51_1F_0001, 0x51_1F_0002
_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
#: Tables with a generated ``id``: an INSERT on PostgreSQL returns it for ``lastrowid``.
_ID_TABLES = {"builds", "approvals", "events", "updates", "rollouts", "chart_applies"}

logging.getLogger("alembic").setLevel(logging.WARNING)


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(_PG_SCHEMES)


def _pg_url(url: str) -> sa.URL:
    u = sa.make_url(url)
    return u.set(drivername="postgresql+psycopg")


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def _portable(sql: str, pg: bool) -> str:
    """``?`` placeholders to the driver's style, outside quoted text; SQLite idioms to SQL."""
    if not pg:
        return sql
    out, quote = [], None
    for ch in sql:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    text = "".join(out)
    if re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO", text, re.IGNORECASE):
        text = re.sub(r"INSERT\s+OR\s+IGNORE\s+INTO", "INSERT INTO", text, count=1, flags=re.IGNORECASE)
        text = text.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    m = re.match(r"\s*INSERT\s+INTO\s+(\w+)", text, re.IGNORECASE)
    if m and m.group(1).lower() in _ID_TABLES and not re.search(r"\bRETURNING\b", text, re.IGNORECASE):
        text = text.rstrip().rstrip(";") + " RETURNING id"
    return text


class Row(dict):
    """A result row: by column name (``row["id"]``), by position (``row[0]``), or ``dict(row)``."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return dict.__getitem__(self, key)


class Result:
    """A fetched result (rows are read before the connection goes back to the pool)."""

    def __init__(self, result: sa.CursorResult, pg: bool):
        self.rowcount = result.rowcount
        self._rows = [Row(r._mapping) for r in result] if result.returns_rows else []
        self.lastrowid: int | None
        if pg:
            self.lastrowid = int(self._rows[0]["id"]) if self._rows and "id" in self._rows[0] else None
        else:
            self.lastrowid = result.lastrowid

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


class Tx:
    """Statements in one transaction (see :meth:`Store.transaction`)."""

    def __init__(self, conn: sa.Connection, pg: bool):
        self.conn, self.pg = conn, pg

    def execute(self, sql: str, params: tuple | dict | list[tuple] = ()) -> Result:
        """A list of parameter tuples runs the statement once per tuple (executemany)."""
        return Result(self.conn.exec_driver_sql(_portable(sql, self.pg), params), self.pg)


class Store:
    """History on SQLite (a file path; ``":memory:"`` for single-threaded tests) or PostgreSQL
    (a ``postgresql://`` URL)."""

    def __init__(self, path: str | Path, *, log_limit: int = 256 * 1024, upgrade: bool = True):
        self.pg = is_postgres(path)
        self.path = sa.make_url(str(path)).render_as_string(hide_password=True) if self.pg else str(path)
        self.log_limit = log_limit
        self._lock = threading.Lock()
        self._engine: sa.Engine | None = None
        try:
            if not self.pg and self.path != ":memory:":
                if Path(self.path).is_dir():
                    raise IsADirectoryError(self.path)
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._engine = self._make_engine(str(path))
            self._check()
            self.revision = self._migrate(upgrade)
            if not self.pg:
                self._check_writable()
        except StoreError:
            self.close()
            raise
        except (sa_exc.DBAPIError, sqlite3.Error, OSError) as exc:
            self.close()
            raise _explain(self.path, getattr(exc, "orig", None) or exc, pg=self.pg) from None

    # -- plumbing -----------------------------------------------------------------
    def _make_engine(self, target: str) -> sa.Engine:
        if self.pg:
            return sa.create_engine(_pg_url(target), pool_pre_ping=True, pool_size=5,
                                    max_overflow=10, pool_timeout=30,
                                    connect_args={"connect_timeout": 10})
        memory = self.path == ":memory:"
        engine = sa.create_engine(
            "sqlite+pysqlite:///" + self.path,
            connect_args={"timeout": 30, "check_same_thread": False},
            **({"poolclass": StaticPool} if memory else {"pool_size": 8, "max_overflow": 16}))

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
            if not memory:
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")

        return engine

    @contextmanager
    def transaction(self, *, immediate: bool = False, lock: int | None = None) -> Iterator[Tx]:
        """One transaction. ``immediate`` takes SQLite's write lock at the start; ``lock`` is a
        PostgreSQL advisory lock key held until the end (both: no two writers interleave)."""
        assert self._engine is not None
        with self._engine.connect() as conn:
            conn.info["immediate"] = immediate
            try:
                with conn.begin():
                    if self.pg and lock is not None:
                        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock,))
                    yield Tx(conn, self.pg)
            finally:
                conn.info.pop("immediate", None)

    def _check(self) -> None:
        """Refuse, at open, a store that is damaged or from an older, unmigratable schema."""
        assert self._engine is not None
        with self._engine.connect() as conn:
            if not self.pg:
                problem = conn.exec_driver_sql("PRAGMA quick_check(1)").scalar()
                if problem != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
            inspector = sa.inspect(conn)
            for table, wanted in _REQUIRED_COLUMNS.items():
                if not inspector.has_table(table):
                    continue
                have = {c["name"] for c in inspector.get_columns(table)}
                missing = sorted(wanted - have)
                if missing:
                    raise StoreError(f"store {self.path} was made by an older Slipway (table {table} "
                                     f"has no column {', '.join(missing)}); {_MOVE_ASIDE}")

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        assert self._engine is not None
        with self._engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _migrate(self, upgrade: bool) -> str | None:
        """Bring the schema to the newest revision; refuse a store from a newer Slipway."""
        current = self.current_revision()
        if current is not None and current not in _known_revisions():
            raise StoreError(
                f"store {self.path} was written by a newer Slipway (schema revision {current}; this "
                f"poller knows up to {head_revision()}); run a newer poller, or point store.url "
                "at another store")
        if current == head_revision() or not upgrade:
            return current
        from alembic import command
        from alembic.config import Config

        with self.transaction(immediate=True, lock=_MIGRATE_LOCK) as tx:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = tx.conn
            command.upgrade(cfg, "head")
        return self.current_revision()

    def _check_writable(self) -> None:
        assert self._engine is not None
        with self._engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None   # a checked-out connection always has its DBAPI connection
            raw.execute("BEGIN IMMEDIATE")
            try:  # a write that is rolled back: fails at once on a read-only file
                version = raw.execute("PRAGMA user_version").fetchone()[0]
                raw.execute(f"PRAGMA user_version={int(version)}")
            finally:
                raw.execute("ROLLBACK")

    def ensure_schema(self, script: str) -> None:
        """Legacy: SQLite ``CREATE ... IF NOT EXISTS`` scripts. The migrations create every
        table, so on SQLite this is a no-op for known tables, and on PostgreSQL it is skipped."""
        if self.pg or self._engine is None:
            return
        with self._lock, self._engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.executescript(script)  # sqlite3 only (checked above)

    def execute(self, sql: str, params: tuple | dict = ()) -> Result:
        """One statement in its own transaction (``?`` placeholders)."""
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- builds -------------------------------------------------------------------
    def start_build(self, *, source: str, image: str, ref: str, kind: str, sha: str,
                    tags: list[str], pid: int | None = None) -> int:
        cur = self.execute(
            "INSERT INTO builds (source, image, ref, kind, sha, tags, status, started_at, pid, host)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (source, image, ref, kind, sha, json.dumps(tags), time.time(), pid, socket.gethostname()))
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
        """Close builds left ``running`` by a process that is gone. Returns how many.

        A build of this host is judged by its pid; one of another host (a shared PostgreSQL
        store) by its build claim, which its process renews while it runs.
        """
        here, now = socket.gethostname(), time.time()
        rows = self.execute("SELECT id, pid, host, image, ref FROM builds WHERE status='running'"
                            ).fetchall()
        n = 0
        for row in rows:
            if row["host"] and row["host"] != here:
                claim = self.execute("SELECT expires_at FROM build_claims WHERE image=? AND ref=?",
                                     (row["image"], row["ref"])).fetchone()
                alive = claim is not None and claim["expires_at"] > now
            else:
                alive = older_than_pid_alive(row["pid"]) if older_than_pid_alive else False
            if not alive:
                self.finish_build(row["id"], status="interrupted",
                                  error="the process running this build stopped")
                n += 1
        return n

    @staticmethod
    def release_lost_build(tx: Tx, *, image: str, ref: str, sha: str,
                           gone: Callable[[str, int], bool]) -> int:
        """In ``tx``: the build of ``(image, ref, sha)`` whose process ``gone(host, pid)`` says
        is gone is marked ``interrupted``, and its build claim released, so a retry builds at
        once on any host (not after the claim's lease). Returns how many builds were marked."""
        now, n = time.time(), 0
        for row in tx.execute("SELECT id, host, pid FROM builds WHERE image=? AND ref=? AND sha=?"
                              " AND status='running'", (image, ref, sha)).fetchall():
            if gone(row["host"] or "", row["pid"] or 0):
                tx.execute("UPDATE builds SET status='interrupted', error=?, finished_at=?,"
                           " duration=? - started_at WHERE id=? AND status='running'",
                           ("the worker running this build stopped", now, now, row["id"]))
                n += 1
        claim = tx.execute("SELECT host, pid FROM build_claims WHERE image=? AND ref=? AND sha=?",
                           (image, ref, sha)).fetchone()
        if claim is not None and gone(claim["host"], claim["pid"]):
            tx.execute("DELETE FROM build_claims WHERE image=? AND ref=? AND sha=?",
                       (image, ref, sha))
        return n

    def settle_pushed(self, *, image: str, ref: str, sha: str, digest: str) -> int | None:
        """Record as succeeded the newest build of ``(image, ref, sha)`` if its process stopped
        (``running`` or ``interrupted``) after pushing ``digest``, which the registry shows for
        that commit. Returns the build's id, or ``None`` when there is no such build."""
        now = time.time()
        with self.transaction(immediate=True) as tx:
            row = tx.execute("SELECT id, status, log FROM builds WHERE image=? AND ref=? AND sha=?"
                             " ORDER BY id DESC LIMIT 1", (image, ref, sha)).fetchone()
            if row is None or row["status"] not in ("running", "interrupted"):
                return None
            note = (f"--> {image}@{digest} was pushed before the process running this build "
                    "stopped; a later job found it in the registry\n")
            tx.execute("UPDATE builds SET status='succeeded', digest=?, error=NULL, log=?,"
                       " finished_at=?, duration=? - started_at"
                       " WHERE id=? AND status IN ('running', 'interrupted')",
                       (digest, (row["log"] or "") + note, now, now, row["id"]))
        return int(row["id"])

    def _build(self, row: Row) -> BuildRecord:
        d = dict(row)
        d.pop("pid", None)
        d.pop("host", None)
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
        now = time.time()
        with self.transaction(immediate=True, lock=_CLAIM_LOCK) as tx:
            row = tx.execute("SELECT * FROM build_claims WHERE image=? AND ref=?",
                             (image, ref)).fetchone()
            if (row is not None and row["holder"] != holder and row["expires_at"] > now
                    and holder_alive(row["host"], row["pid"])):
                return dict(row)
            tx.execute("INSERT INTO build_claims (image, ref, sha, holder, host, pid, expires_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (image, ref) DO UPDATE SET"
                       " sha=excluded.sha, holder=excluded.holder, host=excluded.host,"
                       " pid=excluded.pid, expires_at=excluded.expires_at",
                       (image, ref, sha, holder, host, pid, now + ttl))
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
