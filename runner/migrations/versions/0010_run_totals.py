"""Run totals for metrics: runs that can no longer change are folded into per-(job, status)
totals, so a Prometheus scrape reads only the newest runs, not the whole history.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_totals",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.Column("timed", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("buckets", sa.JSON, nullable=False),
        sa.Column("last_ended_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "run_totals_mark",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("through_id", sa.BigInteger, nullable=False),
        sa.Column("bounds", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_totals_mark")
    op.drop_table("run_totals")
