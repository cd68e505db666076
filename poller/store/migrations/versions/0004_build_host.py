"""builds.host: the machine whose process runs a build (several machines share a PostgreSQL
store; a pid alone names a process only on its own host).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("builds", sa.Column("host", sa.Text))
