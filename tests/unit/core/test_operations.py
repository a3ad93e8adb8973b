"""The operation path: steps undo in reverse on failure, outcomes land in the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from bramble.core.context import RequestContext
from bramble.core.errors import ActionFailed, Conflict
from bramble.core.operations import OperationHandle, OperationRunner
from bramble.db.migrate import upgrade
from bramble.db.models import OperationRow
from bramble.db.session import Database

pytestmark = pytest.mark.anyio

CTX = RequestContext(actor="token:tester", request_id="req-test")


@pytest.fixture
async def runner(tmp_path: Path) -> OperationRunner:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}")
    await upgrade(db)
    return OperationRunner(db)


async def _events(runner: OperationRunner) -> list:
    from bramble.audit import store

    async with runner.db.read() as session:
        return await store.query(session, limit=50)


async def test_failure_unwinds_done_steps_in_reverse(runner: OperationRunner) -> None:
    undone: list[str] = []

    async def work(op: OperationHandle) -> None:
        async def undo_disk() -> None:
            undone.append("disk")

        async def undo_row() -> None:
            undone.append("row")

        op.undo.push("row", undo_row)
        op.undo.push("disk", undo_disk)
        raise RuntimeError("qemu-system-x86_64: could not load kernel")

    with pytest.raises(ActionFailed, match="could not load kernel"):
        await runner.run(CTX, "vm.create", "vm/x", work)
    assert undone == ["disk", "row"]
    event = (await _events(runner))[-1]
    assert (event.action, event.outcome, event.actor, event.request_id) == (
        "vm.create",
        "failed",
        "token:tester",
        "req-test",
    )
    assert "could not load kernel" in event.message


async def test_success_records_before_and_after(runner: OperationRunner) -> None:
    async def work(op: OperationHandle) -> dict:
        op.before, op.after = {"state": "stopped"}, {"state": "running"}
        return {"ok": True}

    row = await runner.run(CTX, "vm.start", "vm/x", work)
    assert row.status == "succeeded" and row.result == {"ok": True} and row.progress == 100
    event = (await _events(runner))[-1]
    assert event.before == {"state": "stopped"} and event.after == {"state": "running"}


async def test_rejected_requests_are_audited(runner: OperationRunner) -> None:
    with pytest.raises(Conflict):
        async with runner.validating(CTX, "vm.create", "vm/dup"):
            raise Conflict("a VM named 'dup' already exists")
    event = (await _events(runner))[-1]
    assert event.outcome == "rejected" and "already exists" in event.message


async def test_same_target_runs_one_at_a_time(runner: OperationRunner) -> None:
    import anyio

    order: list[str] = []

    def step(name: str):  # type: ignore[no-untyped-def]
        async def work(op: OperationHandle) -> None:
            order.append(f"{name}-start")
            await anyio.sleep(0.05)
            order.append(f"{name}-end")

        return work

    await runner.submit(CTX, "vm.start", "vm/a", step("first"))
    await runner.submit(CTX, "vm.stop", "vm/a", step("second"))
    await runner.drain()
    assert order == ["first-start", "first-end", "second-start", "second-end"]


async def test_interrupted_operations_are_failed_at_start_up(runner: OperationRunner) -> None:
    from bramble.db.models import utcnow

    async with runner.db.write() as session:
        session.add(
            OperationRow(id="op-1", action="vm.create", target="vm/x", status="running", actor="a", created_at=utcnow())
        )
    assert await runner.fail_interrupted() == 1
    async with runner.db.read() as session:
        row = await session.get(OperationRow, "op-1")
    assert row is not None and row.status == "failed" and "restart" in (row.error or "")
