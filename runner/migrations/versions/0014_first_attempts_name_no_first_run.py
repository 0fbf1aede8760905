"""A fire's first attempt stores no first_run_id (NULL: it is its own first run); rows written
before keep their own id there, and readers take either the same way. Nothing changes in the
tables: the revision is there so that a runner older than this one, whose prune grouped a
fire's attempts by first_run_id alone, refuses the database instead of pruning it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    op.execute("UPDATE runs SET first_run_id = id WHERE first_run_id IS NULL AND attempt = 1")
