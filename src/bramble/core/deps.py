"""What every service needs, bundled once by the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bramble.config import Settings
from bramble.core.errors import NotFound
from bramble.core.gateway import BootGateway, InventoryStore, NodeDirectory
from bramble.core.operations import OperationRunner
from bramble.db.session import Database
from bramble.storage.driver import StorageDriver
from bramble.storage.pools import StoragePools

Row = TypeVar("Row")


@dataclass
class CoreDeps:
    db: Database
    runner: OperationRunner
    settings: Settings
    nodes: NodeDirectory
    image_store: StorageDriver
    # The bare-metal inventory (files) and the boot role; None when this daemon has neither.
    inventory: InventoryStore | None = None
    boot: BootGateway | None = None
    # One driver per storage pool (``image_store`` is the default pool's); None: the default only.
    storage_pools: StoragePools | None = None


async def find_by_ref(session: AsyncSession, model: type[Row], ref: str, kind: str) -> Row:
    """Look a row up by id or name; NotFound says which kind and what was asked for."""
    table: Any = model
    row = (await session.scalars(select(model).where(or_(table.id == ref, table.name == ref)))).first()
    if row is None:
        raise NotFound(f"{kind} {ref!r} not found")
    return row
