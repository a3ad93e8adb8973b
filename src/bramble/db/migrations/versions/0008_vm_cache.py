"""vms.cache: whether a VM's disk is a local overlay on the node's cache tier

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 06:40:00

"on": the VM's disk_path is a qcow2 overlay on the node-local cache of its RBD image
(storage/cache.py); "off": an ordinary disk of its pool. Existing VMs are "off".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vms", sa.Column("cache", sa.String(length=8), nullable=False, server_default="off"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("cache")
