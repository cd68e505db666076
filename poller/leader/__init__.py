"""Leader election among ``poller run`` replicas on one PostgreSQL store.

One mechanism: a PostgreSQL *session* advisory lock (``pg_try_advisory_lock``) held on a
dedicated connection. The replica holding it is the leader and runs the scheduled work
(polls, chart watches, deployment updates, rollouts); the others serve the HTTP API and
webhooks and try for the lock every ``interval`` seconds. The server releases the lock the
moment the leader's connection ends (process killed, host gone once TCP keepalives give up),
so a follower takes over within about ``interval`` seconds of that. The leader checks its
connection every ``interval`` seconds and steps down at the first failure (the database
restarted, the network cut), so two leaders overlap at most one ``interval``; builds are
additionally kept single by the queue's locks.

With SQLite there is one process and no election: it always leads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from poller.logs import get_logger

log = get_logger("leader")

#: The advisory lock key of the leader (any 64-bit number unique to Slipway).
LEADER_KEY = 0x51_1F_1EAD


def _conninfo(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Leader:
    def __init__(self, url: str, *, interval: float = 2.0, key: int = LEADER_KEY,
                 on_change: Callable[[bool], None] | None = None):
        self._conninfo = _conninfo(url)
        self.interval = interval
        self.key = key
        self.on_change = on_change
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.since: float | None = None

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval * 3)

    def _set(self, leading: bool, **why) -> None:
        if leading == self._leading.is_set():
            return
        if leading:
            self._leading.set()
            self.since = time.time()
            log.info("leader.elected", **why)
        else:
            self._leading.clear()
            self.since = None
            log.warning("leader.lost", **why)
        if self.on_change is not None:
            try:
                self.on_change(leading)
            except Exception as exc:  # noqa: BLE001 - a listener must not stop the election
                log.error("leader.listener_failed", error=repr(exc))

    def _connect(self):
        import psycopg

        keep = max(1, int(self.interval))
        return psycopg.connect(self._conninfo, autocommit=True,
                               connect_timeout=max(2, int(self.interval * 2)),
                               application_name="slipway-leader", keepalives=1,
                               keepalives_idle=keep, keepalives_interval=keep, keepalives_count=2,
                               options=f"-c statement_timeout={int(self.interval * 1000)}")

    def _loop(self) -> None:
        import psycopg

        conn = None
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                if conn is None:
                    conn = self._connect()
                if self._leading.is_set():
                    conn.execute("SELECT 1")  # the session (and so the lock) is still ours
                elif conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                    self._set(True)
            except psycopg.Error as exc:
                self._set(False, error=" ".join(str(exc).split())[:200])
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:  # stepping down on purpose: the lock goes with the session
            conn.close()
        self._set(False, reason="stopped")
