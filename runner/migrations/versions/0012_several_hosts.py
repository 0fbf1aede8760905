"""Several hosts: each retry of a fire is unique (survivors retry a lost run once between them),
and a daemon's row holds its host's clock at its last beat and the runs it started lately.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "uq_runs_job_fire_key_retry",
        "runs",
        ["job", "fire_key", "attempt"],
        unique=True,
        sqlite_where=sa.text("attempt > 1"),
        postgresql_where=sa.text("attempt > 1"),
    )
    op.add_column("daemons", sa.Column("host_time", sa.DateTime, nullable=True))
    op.add_column("daemons", sa.Column("fired", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemons") as batch:
        batch.drop_column("fired")
        batch.drop_column("host_time")
    op.drop_index("uq_runs_job_fire_key_retry", table_name="runs")
