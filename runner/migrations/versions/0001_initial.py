"""Run history, per-job state and overlap leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from runner.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("fire_key", sa.String(400), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("first_run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("scheduled_at", UTCDateTime, nullable=True),
        sa.Column("queued_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("ended_at", UTCDateTime, nullable=True),
        sa.Column("heartbeat_at", UTCDateTime, nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("signal", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("log_path", sa.Text, nullable=True),
        sa.Column("params", sa.JSON, nullable=True),
        sa.Column("paths", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
    )
    op.create_index(
        "uq_runs_job_fire_key",
        "runs",
        ["job", "fire_key"],
        unique=True,
        sqlite_where=sa.text("attempt = 1"),
        postgresql_where=sa.text("attempt = 1"),
    )
    op.create_index("ix_runs_job_id", "runs", ["job", "id"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "job_state",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.JSON, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("job_state")
    op.drop_index("ix_runs_status", table_name="runs")
    op.drop_index("ix_runs_job_id", table_name="runs")
    op.drop_index("uq_runs_job_fire_key", table_name="runs")
    op.drop_table("runs")
