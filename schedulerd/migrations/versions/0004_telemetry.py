"""Telemetry: drained GPUs per node, idle GPU-seconds in the ledger, per-job GPU figures.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("gpu_health", sa.JSON(), nullable=True))
    with op.batch_alter_table("usage") as batch:
        batch.add_column(
            sa.Column("idle_gpu_seconds", sa.Float(), nullable=False, server_default="0")
        )
    op.create_table(
        "job_gpu_stats",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("util_avg", sa.Float(), nullable=False),
        sa.Column("mem_peak_mb", sa.Integer(), nullable=False),
        sa.Column("sampled_s", sa.Float(), nullable=False),
        sa.Column("idle_gpu_s", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_gpu_stats")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("idle_gpu_seconds")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("gpu_health")
