"""Schema migrations, applied by the daemon at start-up (idempotent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from bramble.db.session import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Any = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision."""

    def _run(connection: Any) -> None:
        command.upgrade(alembic_config(connection), "head")

    # A plain (deferred) transaction: DDL on SQLite needs no IMMEDIATE lock dance here.
    async with database.writer.begin() as conn:
        await conn.run_sync(_run)


async def autogenerate(database: Database, message: str) -> None:
    """Developer helper: write a new revision from the difference to the models."""

    def _run(connection: Any) -> None:
        command.revision(alembic_config(connection), message=message, autogenerate=True)

    async with database.writer.begin() as conn:
        await conn.run_sync(_run)
