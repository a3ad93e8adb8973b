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
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bramble.compute.driver import DiskAttachment, VmRuntime, VmSpec
from bramble.compute.qemu.driver import QemuDriver, open_verified_pid

REPO = Path(__file__).resolve().parents[3]
GUEST_CACHE = Path(os.environ.get("BRAMBLE_GUEST_CACHE", "/var/cache/bramble/guests"))
ARCHES = ("x86_64", "aarch64")
BINARIES = ("qemu-system-x86_64", "qemu-system-aarch64", "qemu-img")


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie is dead for our purposes."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def qemu_pids(text: str) -> set[int]:
    """Live QEMU processes whose command line contains ``text`` (a vm id or a directory)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_qemu = os.path.basename(argv[0]).startswith(b"qemu-system")
        if is_qemu and any(text.encode() in a for a in argv) and pid_alive(int(proc.name)):
            found.add(int(proc.name))
    return found


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


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Tiny x86_64 and aarch64 guests, built (or found up to date) in the guest cache."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"QEMU not installed ({', '.join(missing)})")
    built = {}
    for arch in ARCHES:
        target = GUEST_CACHE / arch
        result = subprocess.run(
            [str(REPO / "scripts" / "build-guest.sh"), arch, str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"build-guest.sh {arch} failed:\n{result.stdout}\n{result.stderr}")
        built[arch] = target
    return built


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
