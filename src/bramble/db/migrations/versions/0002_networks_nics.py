"""VM networks, NICs and address releases (quarantine)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bramble.db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("cidr", sa.String(length=18), nullable=False),
        sa.Column("gateway", sa.String(length=15), nullable=False),
        sa.Column("dns", sa.String(length=255), nullable=False),
        sa.Column("nat", sa.Boolean(), nullable=False),
        sa.Column("uplink", sa.String(length=15), nullable=True),
        sa.Column("vlan", sa.Integer(), nullable=True),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "nics",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("vm_id", sa.String(length=36), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=15), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mac"),
        sa.UniqueConstraint("network_id", "address", name="uq_nics_network_address"),
    )
    with op.batch_alter_table("nics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nics_vm_id"), ["vm_id"], unique=False)

    op.create_table(
        "ip_releases",
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=15), nullable=False),
        sa.Column("freed_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("network_id", "address"),
    )


def downgrade() -> None:
    op.drop_table("ip_releases")
    with op.batch_alter_table("nics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nics_vm_id"))
    op.drop_table("nics")
    op.drop_table("networks")
