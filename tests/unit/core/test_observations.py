"""The batched observation log: packets become audit events without a transaction each."""

from __future__ import annotations

import functools
from collections.abc import Callable
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
    assert log.stats["observed"] == 10 and log.stats["written"] == 0 and log.stats["dropped"] == 15
    await log.close()
    async with db.read() as session:
        assert len(await audit.query(session, target="machine/x")) == 10
        [gap] = await audit.query(session, target="audit/observations")
    assert gap.action == "audit.dropped" and gap.outcome == "failed"
    assert gap.after is not None and gap.after["dropped"] == 15
    assert "15 observations dropped" in str(gap.message)
    await db.dispose()


async def test_batched_rows_are_stored_exactly_as_the_orm_stores_them(tmp_path: Path) -> None:
    """The SQLite fast path writes the same text for time and details as an ORM insert, so time
    ranges, ordering and JSON read back the same for both kinds of rows."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy import text

    from bramble.db.models import EventRow

    db = await _db(tmp_path)
    at = datetime(2026, 11, 21, 8, 0, 0, 123456, tzinfo=UTC)
    details = {"mac": "02:00:00:00:00:01", "ipxe": False, "user_class": ["iPXE"], "note": 'ü "q"'}
    async with db.write() as session:
        session.add(EventRow(time=at, actor="boot", action="boot.dhcp", target="orm", outcome="ok",
                             message="m", after=details))  # fmt: skip
    log = ObservationLog(db)
    other_zone = timezone(timedelta(hours=2))
    log.observe(Observation("boot", "boot.dhcp", "fast", "m", "ok", details, at.astimezone(other_zone)))
    log.observe(Observation("boot", "boot.dhcp", "fast-none", "m"))
    log.observe(Observation("boot", "boot.dhcp", "naive", "m", time=at.replace(tzinfo=None)))  # taken as UTC
    await log.flush()
    assert log.stats["write_failures"] == 0
    async with db.read() as session:
        raw = {
            row.target: (row.time, row.after)
            for row in (await session.execute(text("SELECT target, time, after FROM events"))).all()
        }
        assert raw["fast"] == raw["orm"] and raw["naive"][0] == raw["orm"][0]
        assert raw["fast-none"][1] == "null"  # what the ORM's JSON column stores for None
        window = await audit.query(session, since=at - timedelta(microseconds=1), until=at + timedelta(microseconds=1))
    assert sorted(r.target for r in window) == ["fast", "naive", "orm"]
    assert all(r.time == at for r in window)
    assert [r.after for r in window if r.target != "naive"] == [details, details]
    await db.dispose()


async def test_a_flush_writes_what_was_queued_not_what_arrives_meanwhile(tmp_path: Path) -> None:
    """Under steady traffic rows arrive during every transaction; a flush that chased them never ended
    (and the writer turned into back-to-back one-row transactions)."""
    import anyio

    db = await _db(tmp_path)
    log = ObservationLog(db, batch=2)
    write = log._write
    transactions: list[int] = []

    async def rows_arrive_during_the_transaction(rows: list[Observation]) -> bool:
        transactions.append(len(rows))
        log.observe(Observation("boot", "boot.dhcp", "machine/x", "arrived meanwhile"))
        return await write(rows)

    log._write = rows_arrive_during_the_transaction  # type: ignore[method-assign]
    for i in range(5):
        log.observe(Observation("boot", "boot.dhcp", "machine/x", str(i)))
    with anyio.fail_after(10):
        await log.flush()
    assert transactions == [2, 2, 1] and len(log._pending) == 3
    log._write = write  # type: ignore[method-assign]
    await log.close()
    assert log.stats["written"] == 8
    await db.dispose()


async def _wait_until(condition: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
    import anyio

    with anyio.fail_after(deadline):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_storm_is_written_when_it_passes(tmp_path: Path) -> None:
    """While observations pour in, nothing is written (the packet path keeps the CPU); afterwards
    everything is."""
    import anyio

    db = await _db(tmp_path)
    log = ObservationLog(db, flush_seconds=0.01, batch=50, storm_rate=10, storm_delay_seconds=60)
    log.start()
    for burst in range(30):
        for i in range(50):
            log.observe(Observation("boot", "boot.dhcp", "machine/x", f"{burst}.{i}"))
        await anyio.sleep(0.01)
        assert log.stats["written"] == 0, f"written during the storm (burst {burst})"
    assert log.stats["storm_holds"] > 0
    await _wait_until(lambda: log.stats["written"] == 1500, "the storm's rows written after it")
    await log.close()
    await db.dispose()


async def test_a_long_storm_is_written_once_the_backlog_is_full(tmp_path: Path) -> None:
    import anyio

    db = await _db(tmp_path)
    log = ObservationLog(db, flush_seconds=0.01, batch=50, storm_rate=10, storm_backlog=200, storm_delay_seconds=60)
    log.start()
    with anyio.fail_after(20):
        while log.stats["written"] == 0:  # the storm never ends; the backlog bound makes it write
            for i in range(50):
                log.observe(Observation("boot", "boot.dhcp", "machine/x", str(i)))
            await anyio.sleep(0.01)
    assert log.stats["storm_holds"] > 0 and log.stats["dropped"] == 0
    assert log.stats["storm_trickles"] > 0 and len(log._pending) > 0  # one batch a turn, not the whole queue
    await log.close()
    await db.dispose()


async def test_rows_are_formatted_when_written_and_a_failing_format_costs_only_its_row(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    log = ObservationLog(db)
    made: list[int] = []

    def render(i: int) -> tuple[str, dict[str, object] | None]:
        made.append(i)
        if i == 1:
            raise ValueError("broken record")
        return f"packet {i}", {"i": i}

    for i in range(3):
        log.observe(Observation("boot", "boot.dhcp", "machine/lazy", "", render=functools.partial(render, i)))
    assert made == []  # queued as facts, formatted by the writer
    await log.flush()
    assert made == [0, 1, 2] and log.stats["written"] == 3 and log.stats["write_failures"] == 0
    async with db.read() as session:
        rows = await audit.query(session, target="machine/lazy")
    assert [r.message for r in rows] == ["packet 0", "(boot.dhcp: could not format: broken record)", "packet 2"]
    assert rows[0].after == {"i": 0} and rows[1].after is None
    await db.dispose()


async def test_close_during_a_write_loses_nothing(tmp_path: Path) -> None:
    """close() used to cancel the writer task: a pass takes its rows off the queue before it writes
    them, so a stop in mid-write lost the whole pass."""
    import asyncio

    db = await _db(tmp_path)
    log = ObservationLog(db, flush_seconds=0.01, batch=100)
    for i in range(3000):
        log.observe(Observation("boot", "boot.dhcp", "machine/c", str(i)))
    log.start()
    for _ in range(50):  # until the task's pass has taken rows off the queue and is writing them
        await asyncio.sleep(0.001)
        if len(log._pending) < 3000:
            break
    assert len(log._pending) < 3000
    await log.close()
    async with db.read() as session:
        assert len(await audit.query(session, target="machine/c", limit=10_000)) == 3000
    await db.dispose()
