"""Hand-off to Slurm: the job's rule, its Slurm job id and state, how far it is charged.

Revision ID: 0005
Revises: 0004
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS: list[tuple[str, Any, Any]] = [
    ("slurm", sa.String(16), ""),
    ("slurm_job_id", sa.Integer(), "0"),
    ("slurm_state", sa.String(32), ""),
    ("slurm_charged_until", sa.Float(), "0"),
]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, kind, default in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, _, _ in COLUMNS:
            batch.drop_column(name)
