"""security groups, their rules and NIC memberships

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 04:20:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import bramble.db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "security_group_rules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("port_min", sa.Integer(), nullable=True),
        sa.Column("port_max", sa.Integer(), nullable=True),
        sa.Column("cidr", sa.String(length=18), nullable=True),
        sa.Column("remote_group_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", bramble.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["security_groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["remote_group_id"], ["security_groups.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_security_group_rules_group_id"), ["group_id"], unique=False)
    op.create_table(
        "nic_security_groups",
        sa.Column("nic_id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["security_groups.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["nic_id"], ["nics.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("nic_id", "group_id"),
    )
    # The default group exists from the start (id "default"): inbound only from its own members,
    # everything outbound. NICs created without groups join it.
    now = datetime.now(UTC)
    groups = sa.table(
        "security_groups",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
        sa.column("created_at", bramble.db.models.UtcDateTime(timezone=True)),
    )
    rules = sa.table(
        "security_group_rules",
        sa.column("id", sa.String),
        sa.column("group_id", sa.String),
        sa.column("direction", sa.String),
        sa.column("protocol", sa.String),
        sa.column("cidr", sa.String),
        sa.column("remote_group_id", sa.String),
        sa.column("created_at", bramble.db.models.UtcDateTime(timezone=True)),
    )
    description = "inbound only from members of this group, all outbound"
    op.bulk_insert(groups, [{"id": "default", "name": "default", "description": description, "created_at": now}])
    op.bulk_insert(
        rules,
        [
            {"id": "default-ingress", "group_id": "default", "direction": "ingress", "protocol": "any",
             "cidr": None, "remote_group_id": "default", "created_at": now},
            {"id": "default-egress", "group_id": "default", "direction": "egress", "protocol": "any",
             "cidr": "0.0.0.0/0", "remote_group_id": None, "created_at": now},
        ],
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("nic_security_groups")
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_group_rules_group_id"))
    op.drop_table("security_group_rules")
    op.drop_table("security_groups")
