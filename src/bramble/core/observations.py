"""High-volume observations (boot packets, syslog lines) written to the audit log in batches.

A DHCP server answers thousands of packets a second; one write transaction per packet would make the
database the bottleneck and stall the packet path. Observations are queued from plain callbacks and
flushed in one transaction every ``flush_seconds`` or ``batch`` rows. If the queue overflows (the
database is far behind), further observations are counted and dropped rather than blocking boots.

During a storm (observations arriving faster than ``storm_rate`` a second, e.g. a rack powering on at
once) the writer holds its batches, so the packet path has the CPU while clients wait for answers,
and writes them when the storm passes. A storm that outlasts ``storm_delay_seconds`` or queues
``storm_backlog`` rows gets one batch written per ``flush_seconds`` while it lasts (a trickle, not the
whole queue at once: writing 20,000 rows in mid-storm cost a saturated DHCP server a third of its
answers); beyond ``max_queued`` observations are dropped and counted.

The flush shares the packet path's CPU (one event loop), so on SQLite it hands SQLite one prepared
statement and plain tuples (``executemany``) instead of going through the ORM's per-row bind
processing, which cost ~40 µs per row against ~8 µs this way. The values are the ones the ORM would
store (UTC time as SQLAlchemy's SQLite text form, details as JSON text), and a test reads them back
through the ORM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Table, insert

from bramble.db.models import EventRow, utcnow
from bramble.db.session import Database

log = logging.getLogger(__name__)

_EVENTS: Table = EventRow.__table__  # type: ignore[assignment]  # a Table, typed as FromClause


# The columns an observation fills; the rest of the row (request/operation ids, before) stays NULL.
_SQLITE_INSERT = (
    "INSERT INTO events (time, actor, action, target, outcome, message, after) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_to_json = json.JSONEncoder(separators=(", ", ": ")).encode  # SQLAlchemy's JSON column uses json.dumps


def _utc(value: datetime) -> datetime:
    """Observation times are UTC; a naive one is taken as UTC rather than failing a whole batch."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _sqlite_time(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DATETIME stores for ``UtcDateTime`` (naive UTC, microseconds)."""
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


@dataclass(slots=True)
class Observation:
    actor: str
    action: str
    target: str
    message: str
    outcome: str = "ok"
    details: dict[str, Any] | None = None
    time: datetime = field(default_factory=utcnow)
    # (message, details) made when the row is written: packet paths queue facts, not formatted text.
    render: Callable[[], tuple[str, dict[str, Any] | None]] | None = None


def _realize(observation: Observation) -> Observation:
    """Fill message and details from ``render``; a failing render still leaves a row saying so."""
    render = observation.render
    if render is not None:
        observation.render = None
        try:
            observation.message, observation.details = render()
        except Exception as exc:  # one bad record must not cost the batch it is in
            log.exception("could not format an observation for %s", observation.target)
            observation.message = observation.message or f"({observation.action}: could not format: {exc})"
    return observation


class ObservationLog:
    """Queue observations from synchronous callbacks; a background task writes them in batches."""

    def __init__(
        self,
        db: Database,
        *,
        flush_seconds: float = 0.2,
        batch: int = 1000,
        max_queued: int = 50_000,
        storm_rate: float = 500.0,
        storm_backlog: int = 20_000,
        storm_delay_seconds: float = 10.0,
    ) -> None:
        self._db = db
        self._flush_seconds = flush_seconds
        self._batch = batch
        self._max_queued = max_queued
        self._storm_rate, self._storm_backlog, self._storm_delay = storm_rate, storm_backlog, storm_delay_seconds
        self._pending: list[Observation] = []
        self._pending_since = 0.0  # when the oldest queued observation arrived (monotonic)
        # Observations dropped since the last gap record, and when the first of them happened.
        self._gap = 0
        self._gap_started: datetime | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = {
            "observed": 0,
            "written": 0,
            "dropped": 0,
            "write_failures": 0,
            "storm_holds": 0,
            "storm_trickles": 0,
        }

    def observe(self, observation: Observation) -> None:
        """Never blocks and never raises: the packet path must not wait for the database."""
        if len(self._pending) >= self._max_queued:
            self.stats["dropped"] += 1
            if not self._gap:
                self._gap_started = observation.time
            self._gap += 1
            if self.stats["dropped"] in (1, 100, 10_000) or self.stats["dropped"] % 100_000 == 0:
                log.warning("audit log is behind: %d observations dropped so far", self.stats["dropped"])
            return
        self.stats["observed"] += 1
        pending = self._pending
        if not pending:
            self._pending_since = time.monotonic()
        pending.append(observation)
        queued = len(pending)
        if queued == self._batch or queued == self._storm_backlog:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def note_dropped(self, count: int, first: datetime) -> None:
        """Observations lost before they reached this log (the sender was far ahead): the next write
        records the hole, as for the log's own drops."""
        if count <= 0:
            return
        self.stats["dropped"] += count
        if not self._gap:
            self._gap_started = first
        self._gap += count
        log.warning("audit log is behind: %d observations lost before they were queued", count)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(self.stats["observed"], time.monotonic()), name="observation-log"
            )

    async def flush(self) -> None:
        """Write what is queued now, in ``batch``-row transactions (tests and shutdown use this).

        Only what was queued when the flush began: under steady traffic rows keep arriving while a
        transaction runs, and chasing them would turn the 0.2 s batching into back-to-back tiny writes.
        """
        rows, self._pending = self._pending, []
        if self._gap:
            rows.append(self._gap_record())
        for start in range(0, len(rows), self._batch):
            if not await self._write(rows[start : start + self._batch]):
                self._pending[:0] = rows[start + self._batch :]  # keep the rest for the next flush
                return

    def _gap_record(self) -> Observation:
        """The audit log says where it has a hole: how many observations it dropped, from when."""
        dropped, started = self._gap, self._gap_started or utcnow()
        self._gap, self._gap_started = 0, None
        return Observation(
            "bramble",
            "audit.dropped",
            "audit/observations",
            f"{dropped} observations dropped while the audit log was behind (from {started:%Y-%m-%d %H:%M:%S} UTC)",
            "failed",
            {"dropped": dropped, "first": started.isoformat()},
        )

    async def _write(self, rows: list[Observation]) -> bool:
        """One transaction; False (rows dropped, logged, counted) when the database refused it."""
        try:
            async with self._db.write() as session:
                if self._db.is_sqlite:
                    connection = await session.connection()
                    await connection.exec_driver_sql(
                        _SQLITE_INSERT,
                        [
                            (
                                _sqlite_time(_realize(o).time),  # first: fills message and details
                                o.actor,
                                o.action,
                                o.target,
                                o.outcome,
                                o.message,
                                _to_json(o.details),
                            )
                            for o in rows
                        ],
                    )
                else:
                    await session.execute(
                        insert(_EVENTS),
                        [
                            {
                                "time": _utc(_realize(o).time),
                                "actor": o.actor,
                                "action": o.action,
                                "target": o.target,
                                "outcome": o.outcome,
                                "message": o.message,
                                "after": o.details,
                            }
                            for o in rows
                        ],
                    )
            self.stats["written"] += len(rows)
        except Exception:  # the audit writer must outlive a database hiccup
            self.stats["write_failures"] += 1
            log.exception("could not write %d observations to the audit log", len(rows))
            return False
        return True

    async def close(self) -> None:
        """Let the writer task finish the pass it is in, then write everything still queued.

        Not by cancelling the task: a pass takes its rows off the queue before it writes them, so a
        cancel in mid-write lost a whole batch at every stop under load.
        """
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self, counted: int, counted_at: float) -> None:
        """``counted`` observations had arrived at ``counted_at`` (when ``start`` ran)."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            now = time.monotonic()
            observed = self.stats["observed"]
            rate = (observed - counted) / max(now - counted_at, 1e-3)
            counted, counted_at = observed, now
            storm = self._storm(rate, now)
            if storm == "hold":
                self.stats["storm_holds"] += 1
                continue
            if storm == "trickle":
                self.stats["storm_trickles"] += 1
                rows, self._pending = self._pending[: self._batch], self._pending[self._batch :]
                await self._write(rows)  # a refused batch is dropped and counted, as in flush()
                continue
            await self.flush()

    def _storm(self, rate: float, now: float) -> Literal["hold", "trickle", "flush"]:
        """ "hold" the queued rows, write a "trickle" of one batch, or "flush" them all (see the module)."""
        if not self._pending or rate < self._storm_rate:
            return "flush"
        if len(self._pending) >= self._storm_backlog or now - self._pending_since >= self._storm_delay:
            return "trickle"
        return "hold"
