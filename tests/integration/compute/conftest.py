"""Real QEMU (TCG) fixtures for the compute driver.

Guests are built once per session by scripts/build-guest.sh into a cache. Every QEMU
process a test started is killed by PID (found through the pidfiles in the test's own
runtime directory and verified against /proc) and its directory removed, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from tests.qemu_helpers import qemu_pids

from bramble.compute.driver import DiskAttachment, VmRuntime, VmSpec
from bramble.compute.qemu.driver import QemuDriver, open_verified_pid


def kill_vm_processes(runtime_dir: Path) -> None:
    """SIGKILL the QEMU of every VM directory in ``runtime_dir`` (verified PIDs only)."""
    if not runtime_dir.is_dir():
        return
    for vm_dir in runtime_dir.iterdir():
        try:
            pid = int((vm_dir / "qemu.pid").read_text())
        except (OSError, ValueError):
            continue
        pidfd = open_verified_pid(pid, vm_dir.name)
        if pidfd is None:
            continue
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)
    # belt and braces: anything still naming this directory (e.g. pidfile already gone)
    for pid in qemu_pids(str(runtime_dir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 20
    while qemu_pids(str(runtime_dir)) and time.monotonic() < end:
        time.sleep(0.05)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short private directory (unix socket paths are limited); QEMUs in it die afterwards."""
    path = Path(tempfile.mkdtemp(prefix="brq-", dir="/tmp"))
    try:
        yield path
    finally:
        kill_vm_processes(path)
        shutil.rmtree(path, ignore_errors=True)


class Events:
    """A state callback that records what the driver reported."""

    def __init__(self) -> None:
        self.seen: list[VmRuntime] = []

    async def __call__(self, runtime: VmRuntime) -> None:
        self.seen.append(runtime)

    def reasons(self, vm_id: str) -> list[str]:
        return [r.reason for r in self.seen if r.vm_id == vm_id]


@pytest.fixture
def live_qemus() -> Callable[[str], set[int]]:
    """``live_qemus(text)``: PIDs of live QEMUs whose command line contains ``text``."""
    return qemu_pids


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def driver(runtime_dir: Path, events: Events) -> AsyncIterator[QemuDriver]:
    qemu = QemuDriver(runtime_dir, accel="tcg", stop_timeout=20)
    qemu.set_state_callback(events)
    try:
        yield qemu
    finally:
        await qemu.close()


@pytest.fixture
def make_spec(guests: dict[str, Path], runtime_dir: Path) -> Callable[..., VmSpec]:
    """A spec booting the test guest, with a private copy of its empty disk."""

    def make(arch: str = "x86_64", cmdline: str = "quiet", **overrides: object) -> VmSpec:
        vm_id = str(uuid.uuid4())
        disk = runtime_dir / f"{vm_id}.qcow2"
        shutil.copyfile(guests[arch] / "disk.qcow2", disk)
        values: dict[str, object] = {
            "vm_id": vm_id,
            "name": f"test-{arch}",
            "arch": arch,
            "cpus": 1,
            "memory_mib": 256,
            "disks": (DiskAttachment(str(disk)),),
            "kernel": str(guests[arch] / "kernel"),
            "initrd": str(guests[arch] / "initrd.gz"),
            "cmdline": cmdline,
        }
        values.update(overrides)
        return VmSpec(**values)  # type: ignore[arg-type]

    return make
