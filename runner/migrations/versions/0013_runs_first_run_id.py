"""An index on runs.first_run_id: pruning removes a fire's attempts together, and PostgreSQL checks
the first_run_id foreign key of every deleted run (without this index, by reading the whole table).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_first_run_id", "runs", ["first_run_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_first_run_id", table_name="runs")
