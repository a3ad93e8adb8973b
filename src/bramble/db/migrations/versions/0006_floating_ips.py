"""floating IPs: public addresses from a network, mapped 1:1 to a NIC

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bramble.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "floating_ips",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=15), nullable=False),
        sa.Column("nic_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["nic_id"], ["nics.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("network_id", "address", name="uq_floating_ips_network_address"),
        sa.UniqueConstraint("nic_id"),
    )
    op.create_index("ix_floating_ips_network_id", "floating_ips", ["network_id"])


def downgrade() -> None:
    op.drop_index("ix_floating_ips_network_id", table_name="floating_ips")
    op.drop_table("floating_ips")
