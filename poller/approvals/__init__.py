"""A persistent approval queue: updates that wait for a person.

Backed by the store's ``approvals`` table, so a restart keeps every pending request.
A rejected (kind, subject, version) is never proposed again; a request can expire; a pending
request the asker no longer proposes (a newer major came) is superseded, and comes back to
pending if it is proposed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from poller.errors import Conflict, NotFound
from poller.store import Store

PENDING, APPROVED, REJECTED, EXPIRED, APPLIED = "pending", "approved", "rejected", "expired", "applied"
SUPERSEDED = "superseded"
#: Every status an approval can have.
STATUSES = (PENDING, APPROVED, REJECTED, EXPIRED, APPLIED, SUPERSEDED)


class ApprovalNotFound(NotFound):
    pass


@dataclass(frozen=True)
class Approval:
    id: int
    kind: str
    subject: str
    from_version: str | None
    to_version: str
    reason: str
    status: str
    created_at: float
    decided_at: float | None
    decided_by: str | None
    expires_at: float | None


class ApprovalQueue:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    def _row(self, row) -> Approval:
        return Approval(**dict(row))

    def request(self, *, kind: str, subject: str, to_version: str, from_version: str | None = None,
                reason: str = "", ttl: float | None = None) -> Approval:
        """Ask for approval; idempotent per (kind, subject, to_version).

        Returns the existing record when there is one (pending, approved, rejected...), so
        the caller can tell whether to wait, apply, or drop the version for good.
        """
        self.expire()
        now = self.clock()
        self.store.execute(
            "UPDATE approvals SET status='pending', created_at=?, expires_at=?, from_version=?, reason=?"
            " WHERE kind=? AND subject=? AND to_version=? AND status='superseded'",
            (now, now + ttl if ttl else None, from_version, reason, kind, subject, to_version))
        self.store.execute(
            "INSERT OR IGNORE INTO approvals (kind, subject, from_version, to_version, reason,"
            " status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (kind, subject, from_version, to_version, reason, now, now + ttl if ttl else None))
        row = self.store.execute(
            "SELECT * FROM approvals WHERE kind=? AND subject=? AND to_version=?",
            (kind, subject, to_version)).fetchone()
        return self._row(row)

    def get(self, approval_id: int) -> Approval:
        row = self.store.execute("SELECT * FROM approvals WHERE id=?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalNotFound(f"no approval with id {approval_id}")
        return self._row(row)

    def status_of(self, *, kind: str, subject: str, to_version: str) -> str | None:
        self.expire()
        row = self.store.execute(
            "SELECT status FROM approvals WHERE kind=? AND subject=? AND to_version=?",
            (kind, subject, to_version)).fetchone()
        return row["status"] if row else None

    def _decide(self, approval_id: int, status: str, who: str) -> Approval:
        self.expire()
        cur = self.store.execute(
            "UPDATE approvals SET status=?, decided_at=?, decided_by=? WHERE id=? AND status='pending'",
            (status, self.clock(), who, approval_id))
        appr = self.get(approval_id)
        if cur.rowcount == 0 and appr.status != status:
            raise Conflict(f"approval {approval_id} is {appr.status}, not pending")
        self.store.record_event("approval", appr.subject, id=approval_id, decision=status, by=who,
                                to_version=appr.to_version)
        return appr

    def approve(self, approval_id: int, *, by: str = "cli") -> Approval:
        return self._decide(approval_id, APPROVED, by)

    def reject(self, approval_id: int, *, by: str = "cli") -> Approval:
        return self._decide(approval_id, REJECTED, by)

    def supersede(self, *, kind: str, subject: str, keep: set[str]) -> int:
        """Pending requests of ``subject`` other than ``keep`` are no longer asked."""
        marks = ",".join("?" * len(keep))
        cur = self.store.execute(
            "UPDATE approvals SET status='superseded' WHERE kind=? AND subject=? AND status='pending'"
            + (f" AND to_version NOT IN ({marks})" if keep else ""), (kind, subject, *sorted(keep)))
        return cur.rowcount

    def mark_applied(self, approval_id: int) -> None:
        self.store.execute("UPDATE approvals SET status='applied' WHERE id=?", (approval_id,))

    def expire(self) -> int:
        cur = self.store.execute(
            "UPDATE approvals SET status='expired' WHERE status='pending' AND expires_at IS NOT NULL"
            " AND expires_at < ?", (self.clock(),))
        return cur.rowcount

    def list(self, *, status: str | None = PENDING, kind: str | None = None) -> list[Approval]:
        self.expire()
        sql, params = "SELECT * FROM approvals WHERE 1=1", []
        if status:
            sql += " AND status=?"
            params.append(status)
        if kind:
            sql += " AND kind=?"
            params.append(kind)
        rows = self.store.execute(sql + " ORDER BY id", tuple(params)).fetchall()
        return [self._row(r) for r in rows]
