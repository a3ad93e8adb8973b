"""The audit writer process (``bramble.auditd``): a real child writing to a real SQLite database.

Each test starts its own child through ``AuditWriterProcess`` and checks that the child is gone at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bramble.auditd import AuditWriterError, AuditWriterProcess, WriterConfig
from bramble.boot.dhcp import DhcpEvent
from bramble.boot.exchanges import BootObservation
from bramble.db.migrate import upgrade
from bramble.db.models import EventRow
from bramble.db.session import Database

pytestmark = pytest.mark.anyio


def _url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.connect(_url(tmp_path))
    await upgrade(database)
    yield database
    await database.dispose()


async def _rows(db: Database) -> list[EventRow]:
    async with db.read() as session:
        return list((await session.execute(select(EventRow).order_by(EventRow.id))).scalars())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent has not reaped it yet)
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


async def _until(check: Callable[[], Any], what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _packet(mac: str, kind: str, outcome: str, xid: int, **extra: Any) -> DhcpEvent:
    return DhcpEvent(mac, kind, outcome, "10.97.0.10", ("0.0.0.0", 68), None, xid, **extra)  # type: ignore[arg-type]


async def test_packets_become_one_event_per_exchange_written_by_the_child(tmp_path: Path, db: Database) -> None:
    writer = AuditWriterProcess(WriterConfig(_url(tmp_path), "boot:test"))
    await writer.start()
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    offered_at, acked_at = time.time() - 2, time.time() - 1
    for i in range(3):
        mac = f"52:54:00:97:00:1{i}"
        writer.dhcp_packet("br0", f"mac/{mac}", _packet(mac, "DISCOVER", "offered", i, arch="bios"), offered_at)
        writer.dhcp_packet("br0", f"mac/{mac}", _packet(mac, "REQUEST", "acked", i), acked_at)
    writer.dhcp_packet("br0", "machine/lone", _packet("52:54:00:97:00:99", "DISCOVER", "offered", 9), offered_at)
    details = {"client": ("10.97.0.10", 2070), "root": tmp_path}  # a tuple and a Path: not plain JSON
    writer.observe(BootObservation("boot.tftp", "ip/10.97.0.10", "tftp vmlinuz: sent", details=details))
    await writer.close()
    assert not _alive(pid)
    rows = await _rows(db)
    exchanges = [r for r in rows if r.action == "boot.dhcp" and r.after and "offered" in r.after]
    assert len(exchanges) == 3
    first = exchanges[0]
    assert first.actor == "boot:test" and first.target == "mac/52:54:00:97:00:10"
    assert first.message == "DISCOVER from 52:54:00:97:00:10: offered 10.97.0.10; REQUEST: acked 10.97.0.10"
    assert first.after is not None and first.after["arch"] == "bios" and first.after["interface"] == "br0"
    assert abs(first.time.timestamp() - acked_at) < 0.01  # the packet's time, not the write's
    # the offer nobody requested was recorded when the writer stopped, alone, with its own time
    [lone] = [r for r in rows if r.target == "machine/lone"]
    assert str(lone.message).startswith("DISCOVER from 52:54:00:97:00:99: offered") and lone.after is not None
    assert abs(lone.time.timestamp() - offered_at) < 0.01
    [tftp] = [r for r in rows if r.action == "boot.tftp"]
    assert tftp.after == {"client": ["10.97.0.10", 2070], "root": str(tmp_path)}  # as JSON stores them
    assert writer.stats["lost"] == 0 and writer.stats["sent"] == 8


async def test_a_writer_that_dies_is_replaced_and_the_audit_log_says_so(tmp_path: Path, db: Database) -> None:
    writer = AuditWriterProcess(WriterConfig(_url(tmp_path), "boot:test"))
    await writer.start()
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)  # a child this test started
    second = await _until(lambda: writer.pid if writer.pid not in (None, first) else None, "a new writer")
    writer.dhcp_packet("br0", "mac/x", _packet("52:54:00:97:01:01", "REQUEST", "acked", 1), time.time())
    await writer.close()
    assert not _alive(second) and writer.stats["restarts"] == 1
    rows = await _rows(db)
    assert [r.action for r in rows] == ["audit.writer_restarted", "boot.dhcp"]
    assert rows[0].outcome == "failed" and "exited with code -9" in str(rows[0].message)


async def test_what_cannot_be_sent_while_the_writer_is_far_behind_is_counted_and_recorded(
    tmp_path: Path, db: Database
) -> None:
    writer = AuditWriterProcess(WriterConfig(_url(tmp_path), "boot:test"), max_behind_bytes=0)
    await writer.start()
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # stands for a writer stuck behind a slow disk
    try:
        sent = 0
        while writer.stats["lost"] == 0 and sent < 200_000:  # until the pipe is full and frames wait
            for _ in range(256):
                mac = f"52:54:00:{sent >> 16 & 255:02x}:{sent >> 8 & 255:02x}:{sent & 255:02x}"
                writer.dhcp_packet("br0", f"mac/{mac}", _packet(mac, "REQUEST", "acked", sent), time.time())
                sent += 1
            await asyncio.sleep(0)
        lost = writer.stats["lost"]
        assert lost > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    writer.dhcp_packet("br0", "mac/last", _packet("52:54:00:97:02:02", "REQUEST", "acked", 1), time.time())
    await writer.close()
    rows = await _rows(db)
    [gap] = [r for r in rows if r.action == "audit.dropped"]
    assert gap.after is not None and gap.after["dropped"] == lost and gap.outcome == "failed"
    assert sum(r.action == "boot.dhcp" for r in rows) == sent + 1 - lost


async def test_the_writer_outlives_sigterm_and_writes_everything_when_the_daemon_dies(
    tmp_path: Path, db: Database
) -> None:
    """systemd's stop and a Ctrl-C reach the whole process group: the child must wait for its input to
    end. A daemon killed outright ends that input too, and the child writes what it holds."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, sys, time
            from bramble.auditd import AuditWriterProcess, WriterConfig
            from bramble.boot.dhcp import DhcpEvent

            async def main():
                writer = AuditWriterProcess(WriterConfig({_url(tmp_path)!r}, "boot:test"))
                await writer.start()
                print(writer.pid, flush=True)
                sys.stdin.readline()  # the test has sent SIGTERM to the child
                for i in range(500):
                    mac = "52:54:00:97:03:%02x" % (i % 256)
                    event = DhcpEvent(mac, "REQUEST", "acked", None, ("0.0.0.0", 68), None, i)
                    writer.dhcp_packet("br0", "mac/x", event, time.time())
                writer._send()
                await writer._proc.stdin.drain()  # the frame is in the pipe
                os._exit(0)  # dies without closing anything

            asyncio.run(main())
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert parent.stdout is not None and parent.stdin is not None
        child = int(parent.stdout.readline())
        os.kill(child, signal.SIGTERM)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.wait(timeout=30) == 0
        await _until(lambda: not _alive(child), "the orphaned writer to finish")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    rows = await _rows(db)
    assert sum(r.action == "boot.dhcp" for r in rows) == 500


async def test_a_writer_that_cannot_open_the_database_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "audit.db"
    writer = AuditWriterProcess(WriterConfig(f"sqlite+aiosqlite:///{missing}", "boot:test"))
    with pytest.raises(AuditWriterError, match="exited with code 2 before it was ready"):
        await writer.start()
    assert writer.pid is None


@pytest.mark.parametrize("apart", [True, False])
async def test_the_boot_role_records_through_the_writer_process_or_in_the_daemon(
    tmp_path: Path, db: Database, apart: bool
) -> None:
    """``[audit] writer_process``: the daemon's wiring either way (no DHCP interface; listeners on
    ephemeral ports, no traffic)."""
    from bramble.boot.inventory import Inventory
    from bramble.config import load_settings
    from bramble.daemon import start_boot_role

    settings = load_settings(
        state_dir=tmp_path,
        database_url=_url(tmp_path),
        node_name="n1",
        roles=["boot"],
        boot={"tftp_port": 0, "http_port": 0, "syslog_port": 0, "inventory_dir": str(tmp_path / "inv")},
        audit={"writer_process": apart},
    )
    role, sink = await start_boot_role(settings, db, Inventory(settings.inventory_path, "discovered"))
    pid = getattr(sink, "pid", None)
    assert (pid is not None) is apart
    role._emit("boot.wake", "mac/52:54:00:97:04:01", "magic packet sent", details={"interface": "br0"})
    await role.close()
    await sink.close()
    if pid is not None:
        assert not _alive(pid)
    [row] = await _rows(db)
    assert (row.actor, row.action, row.message) == ("boot:n1", "boot.wake", "magic packet sent")
    assert row.after == {"interface": "br0"}
