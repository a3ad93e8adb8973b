"""An undo stack: each step of a multi-step action registers how to take itself back."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

UndoFn = Callable[[], Awaitable[object]]


class UndoStack:
    def __init__(self) -> None:
        self._steps: list[tuple[str, UndoFn]] = []
        self.failures: list[str] = []

    def push(self, description: str, undo: UndoFn) -> None:
        self._steps.append((description, undo))

    def __len__(self) -> int:
        return len(self._steps)

    def discard(self) -> None:
        """The action succeeded: nothing to take back."""
        self._steps.clear()

    async def unwind(self) -> list[str]:
        """Run the undo steps newest first. A failing step is logged and the rest still run.

        Returns the descriptions of the steps that could not be undone.
        """
        while self._steps:
            description, undo = self._steps.pop()
            try:
                await undo()
            except Exception as exc:  # keep unwinding: one stuck step must not strand the others
                log.exception("undo step %r failed", description)
                self.failures.append(f"{description}: {exc}")
        return self.failures
