"""Preemption: per-job signal, grace, restarts limit, checkpoint dir and state.

Revision ID: 0003
Revises: 0002
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS: list[tuple[str, Any, Any]] = [
    ("preempt_signal", sa.Integer(), "10"),
    ("grace_s", sa.Float(), "0"),
    ("no_preempt", sa.Boolean(), sa.false()),
    ("max_restarts", sa.Integer(), "-1"),
    ("checkpoint_dir", sa.Text(), ""),
    ("last_checkpoint", sa.Float(), "0"),
    ("preemptions", sa.Integer(), "0"),
    ("preempted_for", sa.Integer(), "0"),
    ("claimed_node", sa.String(255), ""),
]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, kind, default in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, _, _ in COLUMNS:
            batch.drop_column(name)
