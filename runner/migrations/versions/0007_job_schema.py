"""Job-owned tables: one row per job module whose tables `runner.jobtables.JobTables` created.

The engine's revision no longer carries any shipped job's table: a job declares its tables in its
own module and creates or upgrades them itself (see runner/jobtables.py). `images`, created by
revision 0004 in databases made before this one, is adopted by the ingest_images job as version 1.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_schema",
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_schema")
