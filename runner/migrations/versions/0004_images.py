"""Images: once the ingest_images job's table, created here; now the job owns it.

The table is declared in jobs/ingest_images.py and created by the job itself (runner.jobtables,
revision 0007). Databases migrated before that keep the table this revision made, and the job
adopts it; new databases pass through this revision without creating anything.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # see the docstring: the job creates its own table


def downgrade() -> None:
    pass
