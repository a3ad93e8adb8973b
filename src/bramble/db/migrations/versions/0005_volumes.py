"""volumes: disks that outlive VMs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 04:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bramble.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("driver", sa.String(length=16), nullable=False),
        sa.Column("pool", sa.String(length=128), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=True),
        sa.Column("device", sa.String(length=32), nullable=True),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_volumes_vm_id", "volumes", ["vm_id"])


def downgrade() -> None:
    op.drop_index("ix_volumes_vm_id", table_name="volumes")
    op.drop_table("volumes")
