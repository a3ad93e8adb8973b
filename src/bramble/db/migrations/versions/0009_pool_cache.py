"""storage_pools.cache, precache_gib: the node cache tier's defaults per pool

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21 06:55:00

An RBD pool with cache "on" gives new VMs a local overlay on the node's cache of their image
(unless `vm create --no-cache`); precache_gib is read into the cache when such a VM starts.
The default pool's values come from the [storage] section at every daemon start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("storage_pools", sa.Column("cache", sa.String(length=8), nullable=False, server_default="off"))
    op.add_column("storage_pools", sa.Column("precache_gib", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("storage_pools") as batch:
        batch.drop_column("precache_gib")
        batch.drop_column("cache")
