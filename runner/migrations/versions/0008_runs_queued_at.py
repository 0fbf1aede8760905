"""An index on runs.queued_at: reports read one period of the history, not all of it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_queued_at", "runs", ["queued_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_queued_at", table_name="runs")
