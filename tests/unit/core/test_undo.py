from __future__ import annotations

import pytest

from bramble.core.undo import UndoStack

pytestmark = pytest.mark.anyio


async def test_unwinds_newest_first_and_survives_a_failing_step() -> None:
    done: list[str] = []
    stack = UndoStack()

    async def record(name: str) -> None:
        done.append(name)

    async def explode() -> None:
        raise RuntimeError("disk busy")

    stack.push("first", lambda: record("first"))
    stack.push("broken", explode)
    stack.push("third", lambda: record("third"))
    failures = await stack.unwind()
    assert done == ["third", "first"]
    assert failures == ["broken: disk busy"]
    assert len(stack) == 0


async def test_discard_forgets_everything() -> None:
    stack = UndoStack()
    called = []

    async def undo() -> None:
        called.append(1)

    stack.push("x", undo)
    stack.discard()
    assert await stack.unwind() == [] and called == []
