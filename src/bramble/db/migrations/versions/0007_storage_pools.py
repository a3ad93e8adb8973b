"""storage pools: where images, VM disks and volumes live; existing ones go to `default`

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 06:45:00

The `default` pool row itself is written at daemon start from the `[storage]` section
(the migration cannot read the configuration); rows made before pools existed are
pointed at it here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bramble.db.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_pools",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("driver", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("ceph_conf", sa.Text(), nullable=True),
        sa.Column("ceph_pool", sa.String(length=128), nullable=True),
        sa.Column("ceph_user", sa.String(length=64), nullable=True),
        sa.Column("ceph_keyring", sa.Text(), nullable=True),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.add_column("images", sa.Column("pool", sa.String(length=63), nullable=True))
    op.add_column("vms", sa.Column("pool", sa.String(length=63), nullable=True))
    op.execute("UPDATE images SET pool = 'default'")
    op.execute("UPDATE vms SET pool = 'default'")
    # volumes.pool was a label (the driver or Ceph pool name); now it names a Bramble pool
    op.execute("UPDATE volumes SET pool = 'default'")


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("pool")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("pool")
    op.drop_table("storage_pools")
