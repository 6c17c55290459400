"""Multi-node jobs.

Revision ID: 0009
Revises: 0008

A job across nodes asks for `nodes` parts of `gpus_per_node` GPUs each (`gpus` stays
their total, as the ledger counts it); a job on one node keeps 1 and 0. Once placed,
`parts` holds each part (node, rank, GPUs, what its agent said) and `master_port` the
port its parts meet on.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("nodes", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(
            sa.Column("gpus_per_node", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("parts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("master_port", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("master_port")
        batch.drop_column("parts")
        batch.drop_column("gpus_per_node")
        batch.drop_column("nodes")
