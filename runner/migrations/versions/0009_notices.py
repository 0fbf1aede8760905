"""Notices: each notification (failure, recovery, missed fire) and failed dead-man ping we tried to
deliver, so that rate limits and recoveries work across processes and `runner status` shows what
did not arrive.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=True),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_notices_job_channel_id", "notices", ["job", "channel", "id"])
    op.create_index("ix_notices_created_at", "notices", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_notices_created_at", table_name="notices")
    op.drop_index("ix_notices_job_channel_id", table_name="notices")
    op.drop_table("notices")
