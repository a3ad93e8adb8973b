"""Boot observations reach the audit log on PostgreSQL too (it keeps the ORM's insert path)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bramble.audit import store as audit
from bramble.core.observations import Observation, ObservationLog
from bramble.db.migrate import upgrade
from bramble.db.session import Database

pytestmark = pytest.mark.anyio


async def test_observations_are_written_and_read_back_on_postgres(postgres_url: str) -> None:
    db = Database.connect(postgres_url)
    await upgrade(db)
    at = datetime(2026, 11, 21, 8, 0, 0, 123456, tzinfo=UTC)
    log = ObservationLog(db)
    details = {"mac": "02:00:00:00:00:01", "user_class": ["iPXE"]}
    log.observe(Observation("boot", "boot.dhcp", "machine/pg-obs", "DISCOVER", "ok", details, at))
    log.observe(Observation("boot", "boot.dhcp", "machine/pg-obs", "naive", time=at.replace(tzinfo=None)))
    await log.flush()
    assert log.stats["written"] == 2 and log.stats["write_failures"] == 0
    async with db.read() as session:
        rows = await audit.query(
            session, target="machine/pg-obs", since=at - timedelta(seconds=1), until=at + timedelta(seconds=1)
        )
    assert [(r.time, r.message) for r in rows] == [(at, "DISCOVER"), (at, "naive")]
    assert rows[0].after == details
    await db.dispose()


async def test_audit_retention_deletes_old_events_on_postgres(postgres_url: str) -> None:
    from bramble.audit.retention import RetentionPolicy, prune

    db = Database.connect(postgres_url)
    await upgrade(db)
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    log = ObservationLog(db)
    for age in (1, 40, 41, 42):
        log.observe(Observation("boot", "boot.dhcp", "machine/pg-prune", f"{age}", time=now - timedelta(days=age)))
    log.observe(Observation("api", "vm.create", "vm/pg-prune", "400", time=now - timedelta(days=400)))
    await log.flush()
    result = await prune(db, RetentionPolicy(events_days=365, boot_traffic_days=30), now=now, batch=2)
    assert result.boot_traffic >= 3 and result.other >= 1  # the shared database may hold older rows too
    async with db.read() as session:
        left = [r.message for r in await audit.query(session, target="machine/pg-prune")]
        assert await audit.query(session, target="vm/pg-prune") == []
    assert left == ["1"]
    await db.dispose()


async def test_the_audit_writer_process_writes_exchanges_to_postgres(postgres_url: str) -> None:
    """brambled's child writer on a cluster's database: its own connection, the ORM insert path."""
    import time

    from bramble.auditd import AuditWriterProcess, WriterConfig
    from bramble.boot.dhcp import DhcpEvent

    db = Database.connect(postgres_url)
    await upgrade(db)
    writer = AuditWriterProcess(WriterConfig(postgres_url, "boot:pg"))
    await writer.start()
    mac = "02:00:00:00:00:77"
    at = time.time()
    for kind, outcome in (("DISCOVER", "offered"), ("REQUEST", "acked")):
        event = DhcpEvent(mac, kind, outcome, "10.95.0.7", ("0.0.0.0", 68), None, 4242)  # type: ignore[arg-type]
        writer.dhcp_packet("br-pg", "machine/pg-writer", event, at)
    await writer.close()
    async with db.read() as session:
        [row] = await audit.query(session, target="machine/pg-writer")
    assert row.actor == "boot:pg" and row.message == f"DISCOVER from {mac}: offered 10.95.0.7; REQUEST: acked 10.95.0.7"
    assert row.after is not None and row.after["xid"] == 4242 and row.after["interface"] == "br-pg"
    await db.dispose()
