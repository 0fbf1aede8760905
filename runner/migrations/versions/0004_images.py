"""Images: one row per file the ingest_images job moved to processed/ (the job's own table).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("source_size", sa.BigInteger, nullable=False),
        sa.Column("source_mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("processed_path", sa.Text, nullable=False),
        sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
        sa.Column("near_duplicate_of", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
        sa.Column("near_distance", sa.Integer, nullable=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("byte_size", sa.BigInteger, nullable=False),
        sa.Column("captured_at", sa.DateTime, nullable=True),
        sa.Column("channel_means", sa.JSON, nullable=False),
        sa.Column("channel_stds", sa.JSON, nullable=False),
        sa.Column("brightness", sa.JSON, nullable=False),
        sa.Column("dhash", sa.BigInteger, nullable=False),
        sa.Column("thumbnail_path", sa.Text, nullable=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("ingested_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("processed_path", name="uq_images_processed_path"),
    )
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_state", "images", ["state"])


def downgrade() -> None:
    op.drop_index("ix_images_state", table_name="images")
    op.drop_index("ix_images_sha256", table_name="images")
    op.drop_table("images")
