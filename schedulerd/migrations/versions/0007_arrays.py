"""Job arrays, dependencies and sweeps.

Revision ID: 0007
Revises: 0006

A task of an array names its array (`array_job_id`: the first task's id, which alone
stores the script) and its index; `array_spec` is the array's tasks and limit as
submitted; `dependency` what the job waits for; `params` a sweep trial's parameters.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in ("array_job_id", "array_task_id"):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("array_spec", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("dependency", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("params", sa.JSON(), nullable=True))
        batch.create_index("ix_jobs_array_job_id", ["array_job_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_array_job_id")
        for column in ("params", "dependency", "array_spec", "array_task_id", "array_job_id"):
            batch.drop_column(column)
