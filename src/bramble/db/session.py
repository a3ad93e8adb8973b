"""Engines and sessions.

SQLite runs in WAL mode so readers never wait for the writer, and every write
transaction starts with ``BEGIN IMMEDIATE``: two writers then queue on the lock at
BEGIN instead of both reading and one failing with "database is locked" at COMMIT.
Readers use a separate engine with ordinary deferred transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    # One writer connection: SQLite allows one writer anyway, and waiting for the pool is
    # a fair queue, where a second connection would spin in SQLite's busy handler.
    pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 120} if immediate else {}
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass
class Database:
    """A writer and a reader engine (the same one on PostgreSQL)."""

    url: str
    writer: AsyncEngine
    reader: AsyncEngine

    def __post_init__(self) -> None:
        self._write_sessions = async_sessionmaker(self.writer, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.reader, expire_on_commit=False)

    @classmethod
    def connect(cls, url: str) -> Database:
        if url.startswith("sqlite"):
            return cls(url, _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False))
        engine = create_async_engine(url, pool_pre_ping=True)
        return cls(url, engine, engine)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on error."""
        async with self._write_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions() as session:
            yield session

    async def serialize(self, session: AsyncSession, topic: str) -> None:
        """Make concurrent write transactions about ``topic`` take turns.

        SQLite's BEGIN IMMEDIATE already admits one writer at a time. PostgreSQL runs
        writers side by side, so decisions that read before they write (placement, the
        next free VNC display) take a transaction-scoped advisory lock, which also holds
        across several API nodes.
        """
        if not self.is_sqlite:
            await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:topic))"), {"topic": topic})

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
