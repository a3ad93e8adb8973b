"""The batched observation log: packets become audit events without a transaction each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bramble.audit import store as audit
from bramble.core.observations import Observation, ObservationLog
from bramble.db.migrate import upgrade
from bramble.db.session import Database

pytestmark = pytest.mark.anyio


async def _db(tmp_path: Path) -> Database:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    await upgrade(db)
    return db


async def test_observations_are_written_in_batches_and_queryable_by_target(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    log = ObservationLog(db, flush_seconds=0.01, batch=50)
    log.start()
    for i in range(120):
        log.observe(Observation("boot", "boot.dhcp", f"machine/m{i % 3}", f"DISCOVER {i}", details={"i": i}))
    await log.close()
    async with db.read() as session:
        rows = await audit.query(session, target="machine/m1", limit=1000)
    assert len(rows) == 40
    assert rows[-1].message == "DISCOVER 118" and rows[-1].after == {"i": 118}
    assert log.stats["written"] == 120 and log.stats["dropped"] == 0
    await db.dispose()


async def test_overflow_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    log = ObservationLog(db, max_queued=10)
    for i in range(25):
        log.observe(Observation("boot", "boot.dhcp", "machine/x", str(i)))
    assert log.stats == {"observed": 10, "written": 0, "dropped": 15, "write_failures": 0}
    await log.close()
    async with db.read() as session:
        assert len(await audit.query(session, target="machine/x")) == 10
    await db.dispose()
