"""Wake schedules: parsing with clear errors, and due() across weeks and DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bramble.boot.schedule import Due, ScheduleError, WakeSchedule, due, host_zone, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = frozenset(range(5))


@pytest.mark.parametrize(
    ("text", "days", "at"),
    [
        ("07:30", range(7), (7, 30)),
        ("7:05", range(7), (7, 5)),
        ("on at 07:30", range(7), (7, 30)),
        ("mon-fri 07:30", range(5), (7, 30)),
        ("Mon-Fri at 07:30", range(5), (7, 30)),
        ("sat,sun 09:00", {5, 6}, (9, 0)),
        ("sat, sun 09:00", {5, 6}, (9, 0)),
        ("fri-mon 23:59", {4, 5, 6, 0}, (23, 59)),
        ("wednesday 00:00", {2}, (0, 0)),
        ("weekdays 06:00", range(5), (6, 0)),
        ("weekends 10:00", {5, 6}, (10, 0)),
        ("daily 12:00", range(7), (12, 0)),
        ("mon,wed-thu 08:15", {0, 2, 3}, (8, 15)),
    ],
)
def test_parse(text: str, days: object, at: tuple[int, int]) -> None:
    schedule = parse_schedule(text)
    assert schedule == WakeSchedule(frozenset(days), time(*at))  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "want e.g."),
        ("on", "want e.g."),
        ("mon-fri", "must end with a time"),
        ("7.30", "must end with a time"),
        ("24:00", "not a time of day"),
        ("07:60", "not a time of day"),
        ("funday 07:00", "unknown day 'funday'"),
        ("mon-xyz 07:00", "unknown day 'xyz'"),
        ("mon tue 07:00", "separate days with commas"),
        ("07:30 mon", "must end with a time"),
    ],
)
def test_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(text)


@given(st.sets(st.integers(0, 6), min_size=1), st.integers(0, 23), st.integers(0, 59))
def test_str_round_trips(days: set[int], hour: int, minute: int) -> None:
    schedule = WakeSchedule(frozenset(days), time(hour, minute))
    assert parse_schedule(str(schedule)) == schedule


def _at(zone: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold)  # type: ignore[misc]


def test_due_weekday_morning() -> None:
    schedules = [("node1", parse_schedule("mon-fri 07:30")), ("node2", parse_schedule("sat,sun 09:00"))]
    monday = _at(BERLIN, 2026, 3, 2, 7, 30)  # a Monday
    found = due(schedules, monday - timedelta(minutes=1), monday, BERLIN)
    assert found == [Due("node1", schedules[0][1], monday.astimezone(UTC))]
    assert due(schedules, monday, monday + timedelta(minutes=1), BERLIN) == []  # (since, now]: not twice
    saturday = _at(BERLIN, 2026, 3, 7, 9, 0)
    assert [d.target for d in due(schedules, saturday - timedelta(seconds=1), saturday, BERLIN)] == ["node2"]


def test_catch_up_after_downtime_wakes_once_at_the_latest_occurrence() -> None:
    schedule = parse_schedule("07:30")
    since = _at(BERLIN, 2026, 3, 2, 12, 0)
    now = _at(BERLIN, 2026, 3, 20, 12, 0)
    latest = _at(BERLIN, 2026, 3, 20, 7, 30).astimezone(UTC)
    assert due([("m", schedule)], since, now, BERLIN) == [Due("m", schedule, latest)]


def test_spring_forward_gap_fires_after_the_clocks_moved() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    schedule = parse_schedule("02:30")
    found = due([("m", schedule)], _at(BERLIN, 2026, 3, 29, 1, 0), _at(BERLIN, 2026, 3, 29, 4, 0), BERLIN)
    assert len(found) == 1
    assert found[0].at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # = 03:30 CEST
    assert found[0].at.astimezone(BERLIN).hour == 3


def test_fall_back_fires_once() -> None:
    # America/New_York, 2026-11-01: 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST).
    schedule = parse_schedule("01:30")
    first = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    found = due([("m", schedule)], first - timedelta(hours=1), first + timedelta(hours=3), NEW_YORK)
    assert [d.at for d in found] == [first]
    assert due([("m", schedule)], first, first + timedelta(hours=3), NEW_YORK) == []  # the repeat is not a wake


def test_due_needs_aware_datetimes_and_ordered_window() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        due([], datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC), BERLIN)
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert due([("m", parse_schedule("00:00"))], now, now - timedelta(days=1), BERLIN) == []


def test_host_zone_honours_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert host_zone() == BERLIN
    monkeypatch.setenv("TZ", "No/Such_Zone")
    assert host_zone() is not None


# ------------------------------------------------------------------ properties

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe")]
)
INSTANTS = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)
SCHEDULES = st.builds(
    WakeSchedule, st.frozensets(st.integers(0, 6), min_size=1), st.builds(time, st.integers(0, 23), st.integers(0, 59))
)


@given(ZONES, SCHEDULES, INSTANTS, st.integers(1, 10 * 24 * 60), st.floats(0, 1))
def test_consecutive_windows_agree_with_one_window(
    zone: ZoneInfo, schedule: WakeSchedule, since: datetime, minutes: int, split: float
) -> None:
    """A polling loop's ticks (since, mid], (mid, now] see the same latest wake as one big window."""
    now = since + timedelta(minutes=minutes)
    mid = since + (now - since) * split
    whole = due([("m", schedule)], since, now, zone)
    later = due([("m", schedule)], mid, now, zone)
    earlier = due([("m", schedule)], since, mid, zone)
    assert whole == (later or earlier)
    for found in whole:
        assert since < found.at <= now


@settings(max_examples=60)
@given(ZONES, SCHEDULES, INSTANTS, st.integers(1, 3 * 24 * 60))
def test_matches_a_minute_by_minute_oracle_away_from_dst_hours(
    zone: ZoneInfo, schedule: WakeSchedule, since: datetime, minutes: int
) -> None:
    """Outside 00:00-04:59 local (where these zones change clocks) a wake is exactly a minute whose
    local wall time is the schedule's on one of its days."""
    schedule = WakeSchedule(schedule.days, time(max(schedule.at.hour, 5), schedule.at.minute))
    since = since.replace(second=0, microsecond=0)
    now = since + timedelta(minutes=minutes)
    expected = None
    t = since + timedelta(minutes=1)
    while t <= now:
        local = t.astimezone(zone)
        if local.weekday() in schedule.days and (local.hour, local.minute) == (schedule.at.hour, schedule.at.minute):
            expected = t
        t += timedelta(minutes=1)
    found = due([("m", schedule)], since, now, zone)
    assert [d.at for d in found] == ([expected] if expected else [])
