"""Process identity: where a run's supervisor lives (boot and PID namespace), its job process and
the cgroup holding every process the job started.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pidns", sa.String(80), nullable=True))
        batch.add_column(sa.Column("job_pid", sa.Integer, nullable=True))
        batch.add_column(sa.Column("cgroup", sa.Text, nullable=True))
    with op.batch_alter_table("file_claims") as batch:
        batch.add_column(sa.Column("pidns", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("file_claims") as batch:
        batch.drop_column("pidns")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cgroup")
        batch.drop_column("job_pid")
        batch.drop_column("pidns")
