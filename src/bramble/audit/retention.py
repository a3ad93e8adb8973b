"""Audit log retention: events past their age are deleted, a batch at a time, so the log cannot fill the disk.

Every DHCP exchange, TFTP and HTTP transfer and syslog line is an event. A provisioning network of a few
hundred machines renewing leases and sending syslog writes millions of rows a year, so a node with a
small disk needs the old ones to go. Two ages: boot traffic (``BOOT_TRAFFIC_ACTIONS``), which is
plentiful and mostly useful for recent questions ("when did we last see this MAC?"), and everything else
(API actions, state changes, discoveries, wake-ups), which is scarce and worth keeping longer.
An age of 0 keeps those events forever.

Rows go in batches of ``batch``, one short transaction each, so that writers (the API, the boot role's
audit writer) are never shut out for long; every pass that deleted something records one
``audit.pruned`` event saying how many and up to when. On PostgreSQL several nodes may prune at once:
a row deleted by one is simply not found by the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select

from bramble.audit import store
from bramble.db.models import EventRow, utcnow
from bramble.db.session import Database

log = logging.getLogger(__name__)

BOOT_TRAFFIC_ACTIONS = ("boot.dhcp", "boot.tftp", "boot.http", "boot.syslog")
PRUNE_ACTOR = "bramble"
PRUNE_TARGET = "audit/events"


@dataclass(frozen=True)
class RetentionPolicy:
    """How many days events are kept; 0 keeps them forever."""

    events_days: float
    boot_traffic_days: float

    def cutoffs(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """(boot traffic, other events): events older than these go; None keeps them."""
        return (
            now - timedelta(days=self.boot_traffic_days) if self.boot_traffic_days > 0 else None,
            now - timedelta(days=self.events_days) if self.events_days > 0 else None,
        )


@dataclass(frozen=True)
class PruneResult:
    boot_traffic: int
    other: int
    boot_traffic_before: datetime | None
    other_before: datetime | None

    @property
    def deleted(self) -> int:
        return self.boot_traffic + self.other


async def prune(
    db: Database, policy: RetentionPolicy, *, now: datetime | None = None, batch: int = 5000
) -> PruneResult:
    """Delete every event past its age, ``batch`` rows per transaction; record one ``audit.pruned`` event."""
    now = now or utcnow()
    boot_before, other_before = policy.cutoffs(now)
    boot_traffic = other = 0
    if boot_before is not None:
        boot_traffic = await _delete_older(db, boot_before, batch, boot_traffic=True)
    if other_before is not None:
        other = await _delete_older(db, other_before, batch, boot_traffic=False)
    result = PruneResult(boot_traffic, other, boot_before, other_before)
    if result.deleted:
        parts = []
        if boot_traffic:
            parts.append(f"{boot_traffic} boot traffic events before {boot_before:%Y-%m-%d %H:%M} UTC")
        if other:
            parts.append(f"{other} other events before {other_before:%Y-%m-%d %H:%M} UTC")
        async with db.write() as session:
            store.record(
                session,
                actor=PRUNE_ACTOR,
                action="audit.pruned",
                target=PRUNE_TARGET,
                message="deleted " + " and ".join(parts) + " (audit retention)",
                after={
                    "boot_traffic": boot_traffic,
                    "boot_traffic_before": None if boot_before is None else boot_before.isoformat(),
                    "other": other,
                    "other_before": None if other_before is None else other_before.isoformat(),
                },
            )
    return result


async def _delete_older(db: Database, before: datetime, batch: int, *, boot_traffic: bool) -> int:
    kind = EventRow.action.in_(BOOT_TRAFFIC_ACTIONS) if boot_traffic else EventRow.action.not_in(BOOT_TRAFFIC_ACTIONS)
    # The oldest first, by the time index; the audit.pruned records themselves age out like any event.
    chosen = select(EventRow.id).where(EventRow.time < before, kind).order_by(EventRow.time).limit(batch)
    total = 0
    while True:
        async with db.write() as session:
            done = await session.execute(delete(EventRow).where(EventRow.id.in_(chosen)))
            deleted = cast(CursorResult[Any], done).rowcount  # a DELETE's result is a CursorResult
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # let the other writers in between batches


class AuditPruner:
    """Runs ``prune`` a little after start-up and then every ``interval`` seconds, while the daemon runs."""

    def __init__(
        self, db: Database, policy: RetentionPolicy, *, interval: float = 3600.0, first_delay: float = 60.0
    ) -> None:
        self.db, self.policy, self.interval, self.first_delay = db, policy, interval, first_delay
        self.last: PruneResult | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and (self.policy.events_days > 0 or self.policy.boot_traffic_days > 0):
            self._task = asyncio.create_task(self._run(), name="audit-pruner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # Nodes started together (a cluster after a power cut) do not all prune in the same second.
        await asyncio.sleep(self.first_delay * random.uniform(0.5, 1.5))
        while True:
            try:
                self.last = await prune(self.db, self.policy)
                if self.last.deleted:
                    log.info("audit retention: deleted %d old events", self.last.deleted)
            except Exception:  # housekeeping: the daemon goes on, and the next pass tries again
                log.exception("audit retention: pruning old events failed")
            await asyncio.sleep(self.interval)
