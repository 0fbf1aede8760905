"""Code versions: which job code each daemon runs and since when, the jobs it cannot run, and
which runner version migrated the schema (an older runner names it when it refuses the database).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from runner.models import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table), as in 0006.
    op.add_column("daemons", sa.Column("code_version", sa.String(80), nullable=True))
    op.add_column("daemons", sa.Column("code_loaded_at", UTCDateTime, nullable=True))
    op.add_column("daemons", sa.Column("broken", sa.JSON, nullable=True))
    op.create_table(
        "schema_upgrades",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("runner_version", sa.String(40), nullable=False),
        sa.Column("upgraded_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("schema_upgrades")
    with op.batch_alter_table("daemons") as batch:
        batch.drop_column("broken")
        batch.drop_column("code_loaded_at")
        batch.drop_column("code_version")
