"""The one path every mutating action takes: validate, act with an undo stack, emit an event.

Short actions run inline and answer at once. Long ones (booting a VM, importing an
image) run as background tasks tracked by an operation row the client can poll. Either
way a failure unwinds the steps that were done, and the outcome lands in the audit log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update

from bramble.audit import store as audit
from bramble.core.context import RequestContext
from bramble.core.errors import ActionFailed, BrambleError
from bramble.core.undo import UndoStack
from bramble.db.models import OperationRow, utcnow
from bramble.db.session import Database

log = logging.getLogger(__name__)

Work = Callable[["OperationHandle"], Awaitable[dict[str, Any] | None]]


@dataclass
class OperationHandle:
    """What a running action sees: its id, its undo stack, and ways to report progress."""

    id: str
    action: str
    target: str
    ctx: RequestContext
    runner: OperationRunner
    undo: UndoStack = field(default_factory=UndoStack)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    async def progress(self, percent: float, message: str | None = None) -> None:
        async with self.runner.db.write() as session:
            await session.execute(
                update(OperationRow)
                .where(OperationRow.id == self.id)
                .values(progress=max(0.0, min(100.0, percent)), message=message)
            )


class OperationRunner:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def lock_for(self, target: str) -> asyncio.Lock:
        """One action at a time per target: a stop waits for the start before it."""
        return self._locks.setdefault(target, asyncio.Lock())

    def is_busy(self, target: str) -> bool:
        lock = self._locks.get(target)
        return lock is not None and lock.locked()

    @asynccontextmanager
    async def validating(self, ctx: RequestContext, action: str, target: str) -> AsyncIterator[None]:
        """Record a rejected request in the audit log before the error reaches the caller."""
        try:
            yield
        except BrambleError as exc:
            async with self.db.write() as session:
                audit.record(
                    session,
                    actor=ctx.actor,
                    action=action,
                    target=target,
                    request_id=ctx.request_id,
                    outcome="rejected",
                    message=exc.message,
                )
            raise

    async def _create_row(self, ctx: RequestContext, action: str, target: str) -> OperationRow:
        row = OperationRow(
            id=str(uuid.uuid4()),
            action=action,
            target=target,
            status="pending",
            actor=ctx.actor,
            request_id=ctx.request_id or None,
            created_at=utcnow(),
        )
        async with self.db.write() as session:
            session.add(row)
        return row

    async def submit(self, ctx: RequestContext, action: str, target: str, work: Work) -> OperationRow:
        """Start ``work`` in the background and return its operation row (status pending)."""
        row = await self._create_row(ctx, action, target)
        handle = OperationHandle(row.id, action, target, ctx, self)
        task = asyncio.create_task(self._run(handle, work), name=f"op-{action}-{target}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return row

    async def run(self, ctx: RequestContext, action: str, target: str, work: Work) -> OperationRow:
        """Run ``work`` now and return the finished row; a failure is raised after unwinding."""
        row = await self._create_row(ctx, action, target)
        handle = OperationHandle(row.id, action, target, ctx, self)
        error = await self._run(handle, work)
        if error is not None:
            raise error
        async with self.db.read() as session:
            done = await session.get(OperationRow, row.id)
        assert done is not None
        return done

    async def _run(self, handle: OperationHandle, work: Work) -> BrambleError | None:
        async with self.lock_for(handle.target):
            await self._set(handle.id, status="running")
            try:
                result = await work(handle)
            except Exception as exc:  # every failure is reported and unwound, never half-done
                return await self._fail(handle, exc)
            handle.undo.discard()
            async with self.db.write() as session:
                await session.execute(
                    update(OperationRow)
                    .where(OperationRow.id == handle.id)
                    .values(status="succeeded", progress=100.0, result=result, finished_at=utcnow())
                )
                audit.record(
                    session,
                    actor=handle.ctx.actor,
                    action=handle.action,
                    target=handle.target,
                    request_id=handle.ctx.request_id,
                    operation_id=handle.id,
                    before=handle.before,
                    after=handle.after,
                )
            return None

    async def _fail(self, handle: OperationHandle, exc: Exception) -> BrambleError:
        if isinstance(exc, BrambleError):
            error = exc
        else:
            log.exception("operation %s (%s %s) failed", handle.id, handle.action, handle.target)
            error = ActionFailed(str(exc) or exc.__class__.__name__)
        stuck = await handle.undo.unwind()
        message = error.message
        if stuck:
            message += "; could not undo: " + "; ".join(stuck)
        async with self.db.write() as session:
            await session.execute(
                update(OperationRow)
                .where(OperationRow.id == handle.id)
                .values(status="failed", error=message, finished_at=utcnow())
            )
            audit.record(
                session,
                actor=handle.ctx.actor,
                action=handle.action,
                target=handle.target,
                request_id=handle.ctx.request_id,
                operation_id=handle.id,
                outcome="failed",
                message=message,
                before=handle.before,
            )
        error.message = message
        return error

    async def _set(self, op_id: str, **values: Any) -> None:
        async with self.db.write() as session:
            await session.execute(update(OperationRow).where(OperationRow.id == op_id).values(**values))

    async def fail_interrupted(self) -> int:
        """At start-up: operations that were running when the daemon died did not finish."""
        async with self.db.write() as session:
            result = await session.execute(
                update(OperationRow)
                .where(OperationRow.status.in_(("pending", "running")))
                .values(status="failed", error="interrupted by a daemon restart", finished_at=utcnow())
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for background operations (used at shutdown and by tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
