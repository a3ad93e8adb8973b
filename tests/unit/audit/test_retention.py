"""Audit retention on a real SQLite database: old events go in batches, recent ones and 0-day classes stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bramble.audit import store as audit
from bramble.audit.retention import AuditPruner, RetentionPolicy, prune
from bramble.core.observations import Observation, ObservationLog
from bramble.db.migrate import upgrade
from bramble.db.session import Database

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


async def _db(tmp_path: Path) -> Database:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    await upgrade(db)
    return db


async def _events(db: Database, action: str, target: str, ages_days: list[float]) -> None:
    log = ObservationLog(db)
    for age in ages_days:
        log.observe(Observation("test", action, target, f"{age} days old", time=NOW - timedelta(days=age)))
    await log.flush()


async def _left(db: Database, target: str) -> list[str]:
    async with db.read() as session:
        return [str(row.message) for row in await audit.query(session, target=target, limit=10_000)]


async def test_old_events_go_by_class_and_recent_ones_stay(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    await _events(db, "boot.dhcp", "machine/a", [0.5, 29, 31, 400])
    await _events(db, "boot.syslog", "machine/a", [45])
    await _events(db, "vm.create", "vm/web1", [0.5, 31, 364, 366])
    await _events(db, "machine.discovered", "machine/a", [45])  # not boot traffic: the long age applies

    result = await prune(db, RetentionPolicy(events_days=365, boot_traffic_days=30), now=NOW, batch=2)

    assert (result.boot_traffic, result.other) == (3, 1)
    assert await _left(db, "machine/a") == ["45 days old", "29 days old", "0.5 days old"]
    assert await _left(db, "vm/web1") == ["364 days old", "31 days old", "0.5 days old"]
    async with db.read() as session:
        [record] = await audit.query(session, target="audit/events")
    assert record.action == "audit.pruned" and record.actor == "bramble"
    assert record.after is not None and record.after["boot_traffic"] == 3 and record.after["other"] == 1
    assert "3 boot traffic events before 2026-10-22" in str(record.message)
    assert "1 other events before 2025-11-21" in str(record.message)
    await db.dispose()


async def test_zero_days_keeps_a_class_forever_and_nothing_to_do_records_nothing(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    await _events(db, "boot.tftp", "machine/b", [1000])
    await _events(db, "vm.delete", "vm/old", [1000])

    result = await prune(db, RetentionPolicy(events_days=0, boot_traffic_days=0), now=NOW)
    assert result.deleted == 0 and result.boot_traffic_before is None and result.other_before is None
    assert await _left(db, "machine/b") == ["1000 days old"]
    assert await _left(db, "vm/old") == ["1000 days old"]
    assert await _left(db, "audit/events") == []

    await prune(db, RetentionPolicy(events_days=0, boot_traffic_days=10), now=NOW)
    assert await _left(db, "machine/b") == [] and await _left(db, "vm/old") == ["1000 days old"]
    await db.dispose()


async def test_batches_delete_everything_past_the_age_and_nothing_else(tmp_path: Path) -> None:
    """More old rows than several batches, interleaved in time with rows that must stay."""
    db = await _db(tmp_path)
    await _events(db, "boot.http", "machine/c", [31 + i / 100 for i in range(250)])
    await _events(db, "boot.http", "machine/d", [29 + i / 1000 for i in range(50)])
    result = await prune(db, RetentionPolicy(events_days=365, boot_traffic_days=30), now=NOW, batch=64)
    assert result.boot_traffic == 250 and result.other == 0
    assert await _left(db, "machine/c") == []
    assert len(await _left(db, "machine/d")) == 50
    await db.dispose()


async def test_the_pruner_runs_in_the_background_and_stops(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    await _events(db, "boot.dhcp", "machine/e", [40])
    pruner = AuditPruner(db, RetentionPolicy(365, 30), interval=3600, first_delay=0.01)
    pruner.start()
    try:
        import anyio

        with anyio.fail_after(20):
            while pruner.last is None:
                await anyio.sleep(0.02)
    finally:
        await pruner.close()
    assert pruner.last.boot_traffic == 1
    assert await _left(db, "machine/e") == []
    idle = AuditPruner(db, RetentionPolicy(0, 0))
    idle.start()  # nothing to prune, ever: no task
    assert idle._task is None
    await db.dispose()
