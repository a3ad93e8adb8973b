"""Migration 0002 builds exactly the tables the models describe (networks, nics, ip_releases)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from bramble.db.migrate import upgrade
from bramble.db.models import Base
from bramble.db.session import Database

pytestmark = pytest.mark.anyio


async def test_migrations_match_the_models(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'schema.db'}")
    try:
        await upgrade(db)
        async with db.writer.begin() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
            uniques = await conn.run_sync(lambda c: inspect(c).get_unique_constraints("nics"))
        assert diff == []
        assert sorted(tuple(u["column_names"]) for u in uniques) == [("mac",), ("network_id", "address")]
    finally:
        await db.dispose()
