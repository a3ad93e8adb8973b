"""Writing and querying events. One table, indexed for the questions users ask."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bramble.db.models import EventRow, utcnow

MAX_QUERY_LIMIT = 10_000


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str,
    request_id: str | None = None,
    operation_id: str | None = None,
    outcome: str = "ok",
    message: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> EventRow:
    """Add an event to the session's transaction, so it commits with the change it describes."""
    row = EventRow(
        time=utcnow(),
        actor=actor,
        action=action,
        target=target,
        request_id=request_id or None,
        operation_id=operation_id,
        outcome=outcome,
        message=message,
        before=before,
        after=after,
    )
    session.add(row)
    return row


async def query(
    session: AsyncSession,
    *,
    target: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    request_id: str | None = None,
    limit: int = 100,
) -> list[EventRow]:
    """The newest ``limit`` events that match, returned oldest first."""
    stmt = select(EventRow)
    if target is not None:
        stmt = stmt.where(EventRow.target == target)
    if action is not None:
        if action.endswith(".*"):
            stmt = stmt.where(EventRow.action.startswith(action[:-1]))
        else:
            stmt = stmt.where(EventRow.action == action)
    if since is not None:
        stmt = stmt.where(EventRow.time >= since)
    if until is not None:
        stmt = stmt.where(EventRow.time < until)
    if request_id is not None:
        stmt = stmt.where(EventRow.request_id == request_id)
    stmt = stmt.order_by(EventRow.time.desc(), EventRow.id.desc()).limit(min(limit, MAX_QUERY_LIMIT))
    rows = list((await session.scalars(stmt)).all())
    rows.reverse()
    return rows
