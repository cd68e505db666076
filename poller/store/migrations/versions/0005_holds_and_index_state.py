"""Tables main added while the store gained migrations: staging holds (rollbacks) and the
chart index poller's state. Created only when missing (a SQLite store may have them already,
from the domain's CREATE TABLE IF NOT EXISTS).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

REAL: sa.types.TypeEngine[float] = sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("staging_holds"):
        op.create_table(
            "staging_holds",
            sa.Column("source", sa.Text, primary_key=True, nullable=True),
            sa.Column("digest", sa.Text, nullable=False),
            sa.Column("sha", sa.Text),
            sa.Column("head", sa.Text),
            sa.Column("by", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False, server_default=sa.text("''")),
            sa.Column("at", REAL, nullable=False),
        )
    if not inspector.has_table("chart_index_state"):
        op.create_table(
            "chart_index_state",
            sa.Column("repo", sa.Text, primary_key=True, nullable=True),
            sa.Column("fingerprint", sa.Text, nullable=False),
            sa.Column("etag", sa.Text),
            sa.Column("last_modified", sa.Text),
            sa.Column("digest", sa.Text),
            sa.Column("charts", sa.Text, nullable=False),
            sa.Column("settled", sa.Integer, nullable=False),
            sa.Column("at", REAL, nullable=False),
        )
