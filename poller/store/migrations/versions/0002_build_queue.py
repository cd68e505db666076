"""The build queue's tables (procrastinate's schema), on PostgreSQL only.

With a PostgreSQL store, builds are jobs in the same database (``poller/queue``). SQLite
stores have no queue: nothing changes for them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or sa.inspect(bind).has_table("procrastinate_jobs"):
        return
    from procrastinate.schema import SchemaManager

    # The driver's own execute: the script is run as written (no placeholder parsing).
    driver = bind.connection.driver_connection
    assert driver is not None
    driver.execute(SchemaManager.get_schema())
