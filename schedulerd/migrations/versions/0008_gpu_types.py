"""The GPU types a job accepts (gsub --gpu-type).

Revision ID: 0008
Revises: 0007

`gpu_types` is a JSON list of type names; NULL, as in jobs stored before it, means any
type.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpu_types", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gpu_types")
