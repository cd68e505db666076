"""Work asked of the leader by another replica (a webhook received by a follower).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leader_triggers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("job_id", sa.Text, nullable=False),   # a scheduler job, e.g. 'source:game'
        sa.Column("at", sa.Double().with_variant(sa.REAL(), "sqlite"), nullable=False),
    )
