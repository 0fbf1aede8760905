"""File claims: each (job, path, size, mtime_ns) file version is handed to one run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from runner.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_claims",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("fire_key", sa.String(400), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claimed_at", UTCDateTime, nullable=False),
        sa.Column("done_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("job", "path", "size", "mtime_ns", name="uq_file_claims_version"),
    )
    op.create_index("ix_file_claims_job_fire_key", "file_claims", ["job", "fire_key"])
    op.create_index("ix_file_claims_state", "file_claims", ["state"])


def downgrade() -> None:
    op.drop_index("ix_file_claims_state", table_name="file_claims")
    op.drop_index("ix_file_claims_job_fire_key", table_name="file_claims")
    op.drop_table("file_claims")
