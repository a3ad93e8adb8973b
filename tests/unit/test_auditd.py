"""The audit writer's frame handling, without a child process (the process is in tests/integration/audit)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest

from bramble.auditd import _DHCP, _LOST, _SEEN, FrameHold, WriterConfig, _Writer, can_run_apart
from bramble.boot.dhcp import DhcpEvent
from bramble.core.observations import ObservationLog
from bramble.db.session import Database

MAC = "52:54:00:98:00:01"


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def _writer() -> tuple[_Writer, ObservationLog]:
    url = "sqlite+aiosqlite:////nonexistent/bramble.db"  # never opened: the log is only a queue here
    log = ObservationLog(Database.connect(url))
    return _Writer(WriterConfig(url, "boot:t"), log), log


def _dhcp_fields(kind: str, outcome: str, xid: int = 1) -> tuple[object, ...]:
    """What the daemon sends: all of a DhcpEvent's fields, as a plain tuple."""
    return tuple(DhcpEvent(MAC, kind, outcome, "10.98.0.5", ("0.0.0.0", 68), None, xid))  # type: ignore[arg-type]


def test_a_frame_that_names_a_class_is_refused_and_counted_and_the_next_frame_is_written() -> None:
    writer, log = _writer()
    writer.frame(pickle.dumps([(_SEEN, "boot.tftp", "ip/1.2.3.4", "x", "ok", {"evil": Evil()}, time.time())]))
    writer.frame(b"\x80\x05not a pickle")
    writer.frame(pickle.dumps({"not": "a list"}))
    assert writer.bad_frames == 3 and log.stats["dropped"] == 3 and log.stats["observed"] == 0
    writer.frame(pickle.dumps([(_SEEN, "boot.tftp", "ip/1.2.3.4", "tftp x: sent", "ok", {}, time.time())]))
    assert log.stats["observed"] == 1 and log._pending[0].message == "tftp x: sent"


def test_a_malformed_record_is_dropped_and_the_rest_of_its_frame_kept() -> None:
    writer, log = _writer()
    at = time.time()
    writer.frame(
        pickle.dumps(
            [
                (_DHCP, "br0", f"mac/{MAC}", _dhcp_fields("DISCOVER", "offered"), at),
                (_DHCP, "br0", "mac/short"),  # too few items
                (99, "unknown kind"),
                (_DHCP, "br0", f"mac/{MAC}", _dhcp_fields("REQUEST", "acked"), at + 0.01),
                (_LOST, 12, at - 5),
            ]
        )
    )
    assert writer.bad_records == 2 and writer.bad_frames == 0
    [exchange] = log._pending
    assert exchange.render is not None and exchange.target == f"mac/{MAC}"
    message, details = exchange.render()
    assert message == f"DISCOVER from {MAC}: offered 10.98.0.5; REQUEST: acked 10.98.0.5"
    assert details is not None and details["interface"] == "br0"
    assert log.stats["dropped"] == 12  # what the daemon could not send, recorded as a gap at the next write


def test_the_held_offers_are_released_alone_at_the_end() -> None:
    writer, log = _writer()
    writer.frame(pickle.dumps([(_DHCP, "br0", f"mac/{MAC}", _dhcp_fields("DISCOVER", "offered", 5), time.time())]))
    assert log._pending == []
    writer.release_expired()  # within the hold time: still held
    assert log._pending == []
    writer.release_all()
    [offer] = log._pending
    assert offer.render is not None and offer.render()[0] == f"DISCOVER from {MAC}: offered 10.98.0.5"


@pytest.mark.parametrize(
    ("url", "apart"),
    [
        ("sqlite+aiosqlite:///:memory:", False),
        ("sqlite+aiosqlite://", False),
        ("sqlite+aiosqlite:////var/lib/bramble/bramble.db", True),
        ("postgresql+psycopg://bramble@db/bramble", True),
    ],
)
def test_only_a_database_another_process_can_open_gets_a_writer_process(url: str, apart: bool) -> None:
    assert can_run_apart(url) is apart


def test_the_writer_settings_come_from_the_audit_section(tmp_path: Path) -> None:
    from bramble.config import load_settings

    settings = load_settings(state_dir=tmp_path, audit={"writer_niceness": 19, "storm_hold_rows": 1000})
    config = WriterConfig.from_settings(settings, "boot:n1")
    assert config.niceness == 19 and config.storm_backlog == 1000 and config.actor == "boot:n1"
    assert config.database_url == settings.effective_database_url


def _hold(clock: list[float], **kw: int) -> FrameHold:
    values = {"storm_rate": 500.0, "hold_seconds": 10.0, "hold_bytes": 10_000, "max_bytes": 20_000, **kw}
    return FrameHold(**values, trickle_records=300, clock=lambda: clock[0])  # type: ignore[arg-type]


def test_frames_are_decoded_at_the_next_tick_when_traffic_is_calm() -> None:
    clock = [0.0]
    hold = _hold(clock)
    clock[0] = 1.0
    hold.add(b"a" * 100, 10)
    hold.add(b"b" * 100, 10)
    clock[0] = 1.2
    assert hold.due() == [b"a" * 100, b"b" * 100] and hold.held_bytes == 0


def test_a_storm_is_held_undecoded_then_trickled_then_released_when_it_ends() -> None:
    clock = [0.0]
    hold = _hold(clock)
    for second in range(12):  # 1,000 records a second, in frames of 100 records and 50 bytes
        for tenth in range(10):
            clock[0] = second + tenth / 10
            hold.add(b"x" * 50, 100)
        due = hold.due()
        if second < 10:
            assert due == [], f"second {second}: held"
        else:
            assert len(due) == 3, "past the hold time: one trickle of 300 records a tick"
    assert hold.stats["storm_holds"] == 10 and hold.stats["storm_trickles"] == 2
    clock[0] += 5  # calm: nothing arrived since the last tick
    left = hold.due()
    assert len(left) == 120 - 6 and hold.held_bytes == 0


def test_a_storm_past_the_held_bytes_trickles_and_past_the_maximum_drops_and_counts() -> None:
    clock = [0.0]
    hold = _hold(clock, hold_bytes=1_000, max_bytes=2_000)
    clock[0] = 0.1
    for _ in range(25):
        hold.add(b"y" * 100, 100)
    assert hold.held_bytes == 2_000 and hold.stats["dropped"] == 5 * 100
    assert len(hold.due()) == 3  # over hold_bytes within the hold time: a trickle already
