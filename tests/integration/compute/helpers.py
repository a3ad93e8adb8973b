"""What the compute integration tests share: waiting with a deadline, a guest's console, QMP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bramble.compute.qemu.driver import QemuDriver


async def wait_until(predicate: Callable[[], object], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        await asyncio.sleep(0.1)


def console_text(driver: QemuDriver, vm_id: str) -> str:
    try:
        return Path(driver.console_path(vm_id)).read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def file_chunks(path: Path, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


async def qmp(driver: QemuDriver, vm_id: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
    vm = driver._live(vm_id)
    assert vm is not None, f"{vm_id} is not running"
    return await driver._qmp(vm, command, arguments)
