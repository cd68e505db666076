"""Baseline: the schema every Slipway wrote before the store had migrations.

Each table is created only when missing, so a store written by an older Slipway (tables made
with CREATE TABLE IF NOT EXISTS, no alembic_version) is adopted as it is, history kept.
Frozen: later changes go in new revisions, never here.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: 64-bit ids on PostgreSQL; on SQLite ``INTEGER PRIMARY KEY`` (the rowid) as before.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Timestamps: REAL on SQLite as before, DOUBLE PRECISION (not 4-byte REAL) on PostgreSQL.
REAL: sa.types.TypeEngine[float] = sa.Double().with_variant(sa.REAL(), "sqlite")
TEXT, INT = sa.Text, sa.Integer


def _id() -> sa.Column:
    # nullable: rendered as before (`INTEGER PRIMARY KEY AUTOINCREMENT`); a key is never NULL.
    return sa.Column("id", ID, primary_key=True, autoincrement=True, nullable=True)


def _tables() -> list[tuple[str, list, dict, list[tuple[str, list[str]]]]]:
    """(name, columns and constraints, table kwargs, indexes)."""
    auto = {"sqlite_autoincrement": True}
    return [
        ("builds", [
            _id(),
            sa.Column("source", TEXT, nullable=False),
            sa.Column("image", TEXT, nullable=False),
            sa.Column("ref", TEXT, nullable=False),
            sa.Column("kind", TEXT, nullable=False),
            sa.Column("sha", TEXT, nullable=False),
            sa.Column("tags", TEXT, nullable=False),
            sa.Column("digest", TEXT),
            sa.Column("status", TEXT, nullable=False),
            sa.Column("error", TEXT),
            sa.Column("started_at", REAL, nullable=False),
            sa.Column("finished_at", REAL),
            sa.Column("duration", REAL),
            sa.Column("log", TEXT, nullable=False, server_default=sa.text("''")),
            sa.Column("pid", INT),
        ], auto, [("builds_by_key", ["image", "ref", "sha", "id"])]),
        ("sources", [
            sa.Column("name", TEXT, primary_key=True, nullable=True),
            sa.Column("head", TEXT),
            sa.Column("tags", TEXT, nullable=False, server_default=sa.text("'{}'")),
            sa.Column("last_poll", REAL),
            sa.Column("last_ok", REAL),
            sa.Column("last_error", TEXT),
        ], {}, []),
        ("approvals", [
            _id(),
            sa.Column("kind", TEXT, nullable=False),
            sa.Column("subject", TEXT, nullable=False),
            sa.Column("from_version", TEXT),
            sa.Column("to_version", TEXT, nullable=False),
            sa.Column("reason", TEXT, nullable=False, server_default=sa.text("''")),
            sa.Column("status", TEXT, nullable=False),
            sa.Column("created_at", REAL, nullable=False),
            sa.Column("decided_at", REAL),
            sa.Column("decided_by", TEXT),
            sa.Column("expires_at", REAL),
            sa.UniqueConstraint("kind", "subject", "to_version"),
        ], auto, []),
        ("build_claims", [
            sa.Column("image", TEXT, nullable=False),
            sa.Column("ref", TEXT, nullable=False),
            sa.Column("sha", TEXT, nullable=False),
            sa.Column("holder", TEXT, nullable=False),
            sa.Column("host", TEXT, nullable=False),
            sa.Column("pid", INT, nullable=False),
            sa.Column("expires_at", REAL, nullable=False),
            sa.PrimaryKeyConstraint("image", "ref"),
        ], {}, []),
        ("events", [
            _id(),
            sa.Column("at", REAL, nullable=False),
            sa.Column("kind", TEXT, nullable=False),
            sa.Column("subject", TEXT, nullable=False),
            sa.Column("detail", TEXT, nullable=False, server_default=sa.text("'{}'")),
        ], auto, []),
        ("updates", [
            _id(),
            sa.Column("deployment", TEXT, nullable=False),
            sa.Column("image", TEXT, nullable=False),
            sa.Column("from_ref", TEXT),
            sa.Column("to_ref", TEXT, nullable=False),
            sa.Column("policy", TEXT, nullable=False),
            sa.Column("reason", TEXT, nullable=False),
            sa.Column("approved_by", TEXT),
            sa.Column("status", TEXT, nullable=False),
            sa.Column("error", TEXT),
            sa.Column("detail", TEXT, nullable=False, server_default=sa.text("'{}'")),
            sa.Column("started_at", REAL, nullable=False),
            sa.Column("finished_at", REAL),
        ], auto, [("updates_by_deployment", ["deployment", "to_ref", "id"])]),
        ("update_pins", [
            sa.Column("deployment", TEXT, primary_key=True, nullable=True),
            sa.Column("version", TEXT, nullable=False),
            sa.Column("pinned_by", TEXT, nullable=False),
            sa.Column("pinned_at", REAL, nullable=False),
        ], {}, []),
        ("watched_images", [
            sa.Column("image", TEXT, primary_key=True, nullable=True),
            sa.Column("last_check", REAL),
            sa.Column("last_ok", REAL),
            sa.Column("last_error", TEXT),
            sa.Column("failures", INT, nullable=False, server_default=sa.text("0")),
            sa.Column("retry_at", REAL),
            sa.Column("tags", INT),
            sa.Column("digests", TEXT, nullable=False, server_default=sa.text("'{}'")),
        ], {}, []),
        ("rollouts", [
            _id(),
            sa.Column("deployment", TEXT, nullable=False),
            sa.Column("to_ref", TEXT, nullable=False),
            sa.Column("image", TEXT, nullable=False),
            sa.Column("state", TEXT, nullable=False),
            sa.Column("step", INT, nullable=False, server_default=sa.text("0")),
            sa.Column("message", TEXT),
            sa.Column("created_at", REAL, nullable=False),
            sa.Column("updated_at", REAL, nullable=False),
            sa.UniqueConstraint("deployment", "to_ref"),
        ], auto, []),
        ("rollout_servers", [
            sa.Column("rollout_id", INT, nullable=False),
            sa.Column("server", TEXT, nullable=False),
            sa.Column("step", INT),
            sa.Column("updated_at", REAL),
            sa.Column("reload_status", TEXT),
            sa.Column("reload_attempts", INT, nullable=False, server_default=sa.text("0")),
            sa.Column("reload_detail", TEXT),
            sa.PrimaryKeyConstraint("rollout_id", "server"),
        ], {}, []),
        ("chart_applies", [
            _id(),
            sa.Column("repo", TEXT, nullable=False),
            sa.Column("chart", TEXT, nullable=False),
            sa.Column("version", TEXT, nullable=False),
            sa.Column("channel", TEXT, nullable=False),
            sa.Column("environment", TEXT, nullable=False),
            sa.Column("job", TEXT),
            sa.Column("approval_id", INT),
            sa.Column("at", REAL, nullable=False),
        ], auto, [("chart_applies_by_chart", ["repo", "chart", "channel"])]),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, columns, kwargs, indexes in _tables():
        if inspector.has_table(name):
            have = {ix["name"] for ix in inspector.get_indexes(name)}
        else:
            op.create_table(name, *columns, **kwargs)
            have = set()
        for index, cols in indexes:
            if index not in have:
                op.create_index(index, name, cols)
