"""A submit's idempotency key, and the cluster's own id.

Revision ID: 0006
Revises: 0005

`submit_key` is the key a client sends with SubmitJob and reuses when it retries: unique
per uid, so a retried submit finds its first job instead of making a second one (NULL for
submits without a key). The `cluster` table holds one row: an id made when the database
is, which default output and checkpoint paths carry, so a new cluster's job 1 never
resumes or appends to an old cluster's job 1.
"""

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("submit_key", sa.String(128), nullable=True))
    op.create_index("ix_jobs_uid_submit_key", "jobs", ["uid", "submit_key"], unique=True)
    cluster = op.create_table(
        "cluster",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created", sa.Float(), nullable=False),
    )
    op.bulk_insert(cluster, [{"id": uuid.uuid4().hex[:8], "created": time.time()}])


def downgrade() -> None:
    op.drop_table("cluster")
    op.drop_index("ix_jobs_uid_submit_key", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("submit_key")
