"""Power-on schedules ("mon-fri 07:30"): parsing, and which wakes fell due since the last look.

Pure: the caller's loop owns the clock and calls `due(schedules, since, now)` on every tick;
the windows (since, now] of consecutive ticks neither overlap nor leave gaps, so every wake
happens once. Times are wall-clock times in one time zone (by default the host's), computed with
zoneinfo so daylight saving changes are handled: a time that does not exist on the
spring-forward day fires when the clocks have moved past it (02:30 -> 03:30), and a time that
occurs twice on the fall-back day fires once, at its first occurrence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Due", "ScheduleError", "WakeSchedule", "due", "host_zone", "parse_schedule"]

T = TypeVar("T")

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ALIASES = {
    "daily": frozenset(range(7)),
    "everyday": frozenset(range(7)),
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_LOOKBACK_DAYS = 8  # one full week plus the partial day: the latest occurrence of any schedule


class ScheduleError(ValueError):
    """A schedule string that cannot be understood; the message names the bad part."""


@dataclass(frozen=True)
class WakeSchedule:
    """Power on at ``at`` (hour and minute) on ``days`` (0 = Monday .. 6 = Sunday)."""

    days: frozenset[int]
    at: time

    def __str__(self) -> str:
        clock = f"{self.at.hour:02d}:{self.at.minute:02d}"
        if self.days == frozenset(range(7)):
            return clock
        return ",".join(DAY_NAMES[d] for d in sorted(self.days)) + " " + clock


@dataclass(frozen=True)
class Due(Generic[T]):
    """``target`` (a machine or group name) is due to be woken by ``schedule`` at ``at`` (aware, UTC)."""

    target: T
    schedule: WakeSchedule
    at: datetime


def _day(word: str, text: str) -> int:
    for names in (DAY_NAMES, _FULL_NAMES):
        if word in names:
            return names.index(word)
    raise ScheduleError(f"bad schedule {text!r}: unknown day {word!r} (use mon..sun, mon-fri, daily, weekdays)")


def parse_schedule(text: str) -> WakeSchedule:
    """Parse ``[on] [DAYS] [at] HH:MM`` where DAYS is ``mon``, ``mon-fri``, ``sat,sun``, ``daily``,
    ``weekdays`` or ``weekends`` (comma-separated, ranges may wrap: ``fri-mon``); no DAYS means daily."""
    words = text.lower().replace(", ", ",").split()
    if words[:1] == ["on"]:
        words = words[1:]
    if not words:
        raise ScheduleError(f"bad schedule {text!r}: want e.g. '07:30', 'mon-fri 07:30' or 'sat,sun 09:00'")
    clock = _TIME.fullmatch(words[-1])
    if clock is None:
        raise ScheduleError(f"bad schedule {text!r}: it must end with a time HH:MM")
    hour, minute = int(clock.group(1)), int(clock.group(2))
    if hour > 23 or minute > 59:
        raise ScheduleError(f"bad schedule {text!r}: {words[-1]} is not a time of day (00:00..23:59)")
    words = words[:-1]
    if words[-1:] == ["at"]:
        words = words[:-1]
    if len(words) > 1:
        raise ScheduleError(f"bad schedule {text!r}: separate days with commas, not spaces")
    days: set[int] = set()
    for part in words[0].split(",") if words else ["daily"]:
        if part in _ALIASES:
            days |= _ALIASES[part]
        elif "-" in part:
            first, _, last = part.partition("-")
            start, end = _day(first, text), _day(last, text)
            days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
        else:
            days.add(_day(part, text))
    return WakeSchedule(frozenset(days), time(hour, minute))


def host_zone() -> tzinfo:
    """The host's time zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        resolved = str(localtime.resolve())
        if "/zoneinfo/" in resolved:
            return ZoneInfo(resolved.split("/zoneinfo/", 1)[1])
        with localtime.open("rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return UTC


def _occurrence(day: date, at: time, zone: tzinfo) -> datetime:
    """The UTC instant of wall time ``at`` on ``day`` (fold 0: first of two, or shifted past a gap)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def due(
    schedules: Iterable[tuple[T, WakeSchedule]],
    since: datetime,
    now: datetime,
    zone: tzinfo | None = None,
) -> list[Due[T]]:
    """The wakes that fell due in (since, now], at most one per (target, schedule): the latest.

    ``since`` and ``now`` must be timezone-aware. Catching up after downtime wakes a machine once,
    not once per missed day. The result is sorted by time, then by target.
    """
    if since.tzinfo is None or now.tzinfo is None:
        raise ValueError("since and now must be timezone-aware datetimes")
    start, end = since.astimezone(UTC), now.astimezone(UTC)
    if end <= start:
        return []
    zone = zone or host_zone()
    last_day = end.astimezone(zone).date()
    first_day = max(start.astimezone(zone).date(), last_day - timedelta(days=_LOOKBACK_DAYS)) - timedelta(days=1)
    found: list[Due[T]] = []
    for target, schedule in schedules:
        day = last_day
        while day >= first_day:
            if day.weekday() in schedule.days:
                instant = _occurrence(day, schedule.at, zone)
                if start < instant <= end:
                    found.append(Due(target, schedule, instant))
                    break
                if instant <= start:
                    break
            day -= timedelta(days=1)
    found.sort(key=lambda d: (d.at, str(d.target)))
    return found
