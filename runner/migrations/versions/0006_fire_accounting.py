"""Every fire accounted for: why a fire was skipped, how late a run started, what a daemon holds.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table), so runs keeps its partial unique index.
    op.add_column("runs", sa.Column("reason", sa.String(32), nullable=True))
    op.add_column("runs", sa.Column("late_s", sa.Float, nullable=True))
    op.create_index("ix_runs_reason_queued_at", "runs", ["reason", "queued_at"])
    op.add_column("daemons", sa.Column("queues", sa.JSON, nullable=True))
    op.add_column("daemons", sa.Column("notes", sa.JSON, nullable=True))
    # A fire's attempts share first_run_id; first attempts recorded before this revision had none.
    op.execute("UPDATE runs SET first_run_id = id WHERE first_run_id IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("daemons") as batch:
        batch.drop_column("notes")
        batch.drop_column("queues")
    op.drop_index("ix_runs_reason_queued_at", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("late_s")
        batch.drop_column("reason")
