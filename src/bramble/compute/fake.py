"""FakeComputeDriver: an in-memory hypervisor for fast control-plane tests.

It follows the QemuDriver's contract (idempotent start/stop, the same reasons and
state callbacks) without processes, so reconcile loops and API handlers can be tested
in milliseconds. Knobs make starts fail or guests ignore the power button, and helper
coroutines simulate what a real guest does on its own (crash, shut down, reboot).
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from pathlib import Path

from bramble.compute.arch import UnknownArch, canonical_arch
from bramble.compute.driver import ComputeDriver, ComputeError, DiskAttachment, PowerState, VmRuntime, VmSpec

_pids = itertools.count(200_000)  # unique across instances, like real PIDs on one host


@dataclasses.dataclass
class FakeVm:
    """One VM as the fake 'host' runs it."""

    spec: VmSpec
    state: PowerState
    pid: int | None
    boots: int = 1
    reason: str = ""


class FakeComputeDriver(ComputeDriver):
    """In-memory driver.

    ``vms`` is the fake host: pass the same dict to a second instance to simulate a
    daemon restart (the new instance's ``adopt()`` finds what the first one runs).
    ``fail_start`` maps a vm_id or a name to the ComputeError message ``start`` raises;
    guests whose id or name is in ``ignore_powerdown`` need a hard stop.
    """

    name = "fake"

    def __init__(
        self,
        vms: dict[str, FakeVm] | None = None,
        *,
        fail_start: dict[str, str] | None = None,
        ignore_powerdown: set[str] | None = None,
        console_dir: Path | None = None,
    ) -> None:
        self.vms: dict[str, FakeVm] = {} if vms is None else vms
        self.grown: dict[tuple[str, str], int] = {}  # (vm, disk node) -> size after grow_disk
        self.fail_start: dict[str, str] = dict(fail_start or {})
        self.ignore_powerdown: set[str] = set(ignore_powerdown or ())
        self.console_dir = console_dir
        self.calls: list[tuple[str, str]] = []  # (method, vm_id), for assertions
        self.closed = False

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _runtime(vm_id: str, vm: FakeVm, reason: str, **extra: str) -> VmRuntime:
        vm.reason = reason
        return VmRuntime(vm_id, vm.state, vm.pid, reason, {"accel": "fake", **extra})

    def _live(self, vm_id: str) -> FakeVm | None:
        vm = self.vms.get(vm_id)
        return vm if vm is not None and vm.state in (PowerState.RUNNING, PowerState.PAUSED) else None

    def _require(self, vm_id: str) -> FakeVm:
        vm = self._live(vm_id)
        if vm is None:
            raise ComputeError(f"vm {vm_id} is not running")
        return vm

    def _console_line(self, vm_id: str, vm: FakeVm) -> None:
        """Mimic the test guest's boot marker so console readers have something to read."""
        if self.console_dir is None:  # nothing is written unless asked for
            return
        path = Path(self.console_path(vm_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(f"BRAMBLE-GUEST-UP arch={canonical_arch(vm.spec.arch)}\n")

    # ------------------------------------------------------------------ ComputeDriver

    async def start(self, spec: VmSpec) -> VmRuntime:
        self.calls.append(("start", spec.vm_id))
        vm = self._live(spec.vm_id)
        if vm is not None:
            return self._runtime(spec.vm_id, vm, "already running")
        message = self.fail_start.get(spec.vm_id, self.fail_start.get(spec.name))
        if message is not None:
            raise ComputeError(message)
        try:
            canonical_arch(spec.arch)
        except UnknownArch as exc:
            raise ComputeError(str(exc)) from None
        previous = self.vms.get(spec.vm_id)
        vm = FakeVm(spec, PowerState.RUNNING, next(_pids), boots=previous.boots + 1 if previous else 1)
        self.vms[spec.vm_id] = vm
        self._console_line(spec.vm_id, vm)
        return self._runtime(spec.vm_id, vm, "started")

    async def stop(self, vm_id: str, *, force: bool = False, timeout: float = 30.0) -> VmRuntime:
        self.calls.append(("stop", vm_id))
        vm = self._live(vm_id)
        if vm is None:
            gone = self.vms.get(vm_id)
            if gone is not None:
                return VmRuntime(vm_id, gone.state, None, gone.reason)
            return VmRuntime(vm_id, PowerState.STOPPED, None, "not running")
        if force:
            reason, method = "forced stop", "quit"
        elif vm.state != PowerState.RUNNING:
            reason, method = f"hard stop: the vm was {vm.state.value}", "quit"
        elif vm_id in self.ignore_powerdown or vm.spec.name in self.ignore_powerdown:
            reason, method = f"hard stop: the guest did not shut down within {timeout:g}s", "quit"
        else:
            reason, method = "guest shut down", "acpi"
        vm.state, vm.pid = PowerState.STOPPED, None
        runtime = self._runtime(vm_id, vm, reason, stop_method=method)
        await self._notify(runtime)
        return runtime

    async def reboot(self, vm_id: str) -> VmRuntime:
        self.calls.append(("reboot", vm_id))
        vm = self._require(vm_id)
        vm.boots += 1
        self._console_line(vm_id, vm)
        await self._notify(self._runtime(vm_id, vm, "reset by the host"))
        return self._runtime(vm_id, vm, "reset")

    async def pause(self, vm_id: str) -> VmRuntime:
        self.calls.append(("pause", vm_id))
        vm = self._require(vm_id)
        if vm.state != PowerState.PAUSED:
            vm.state = PowerState.PAUSED
            await self._notify(self._runtime(vm_id, vm, "paused"))
        return self._runtime(vm_id, vm, "paused")

    async def resume(self, vm_id: str) -> VmRuntime:
        self.calls.append(("resume", vm_id))
        vm = self._require(vm_id)
        if vm.state != PowerState.RUNNING:
            vm.state = PowerState.RUNNING
            await self._notify(self._runtime(vm_id, vm, "resumed"))
        return self._runtime(vm_id, vm, "resumed")

    async def status(self, vm_id: str) -> VmRuntime:
        vm = self.vms.get(vm_id)
        if vm is None:
            return VmRuntime(vm_id, PowerState.STOPPED, None, "not running")
        return VmRuntime(vm_id, vm.state, vm.pid, vm.reason, {"accel": "fake"})

    async def adopt(self) -> list[VmRuntime]:
        self.calls.append(("adopt", ""))
        found = []
        for vm_id, vm in sorted(self.vms.items()):
            if vm.state in (PowerState.RUNNING, PowerState.PAUSED):
                found.append(self._runtime(vm_id, vm, "adopted"))
            else:
                found.append(VmRuntime(vm_id, vm.state, None, vm.reason or "qemu is not running"))
        return found

    async def cleanup(self, vm_id: str) -> None:
        self.calls.append(("cleanup", vm_id))
        if self._live(vm_id) is not None:
            raise ComputeError(f"vm {vm_id} is running; stop it before cleaning up")
        self.vms.pop(vm_id, None)

    def console_path(self, vm_id: str) -> str:
        # never a shared file such as /dev/null: callers may delete a VM's console log
        base = self.console_dir or Path(tempfile.gettempdir()) / "bramble-fake-console"
        return str(base / vm_id / "console.log")

    async def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------ simulation

    async def attach_disk(self, vm_id: str, disk: DiskAttachment) -> None:
        vm = self._require(vm_id)
        if vm.state != PowerState.RUNNING:
            raise ComputeError(f"vm {vm_id} is not running")
        if any(d.node_name == disk.node_name for d in vm.spec.disks):
            raise ComputeError(f"vm {vm_id} already has a disk {disk.node_name}")
        vm.spec = dataclasses.replace(vm.spec, disks=(*vm.spec.disks, disk))

    async def detach_disk(self, vm_id: str, node_name: str, *, timeout: float = 30.0) -> None:
        vm = self._require(vm_id)
        vm.spec = dataclasses.replace(vm.spec, disks=tuple(d for d in vm.spec.disks if d.node_name != node_name))

    async def grow_disk(self, vm_id: str, node_name: str, size_bytes: int) -> None:
        vm = self._require(vm_id)
        if not any(d.node_name == node_name for d in vm.spec.disks):
            raise ComputeError(f"vm {vm_id} has no disk {node_name}")
        self.grown[(vm_id, node_name)] = size_bytes

    async def crash(self, vm_id: str, reason: str = "qemu exited unexpectedly") -> VmRuntime:
        """The process dies on its own (what the QEMU driver reports as CRASHED)."""
        vm = self._require(vm_id)
        vm.state, vm.pid = PowerState.CRASHED, None
        runtime = self._runtime(vm_id, vm, reason)
        await self._notify(runtime)
        return runtime

    async def guest_shutdown(self, vm_id: str) -> VmRuntime:
        """The guest powers itself off (``poweroff`` inside the VM)."""
        vm = self._require(vm_id)
        vm.state, vm.pid = PowerState.STOPPED, None
        runtime = self._runtime(vm_id, vm, "guest shut down")
        await self._notify(runtime)
        return runtime

    async def guest_reboot(self, vm_id: str) -> VmRuntime:
        """The guest reboots itself; the process and PID stay."""
        vm = self._require(vm_id)
        vm.boots += 1
        self._console_line(vm_id, vm)
        runtime = self._runtime(vm_id, vm, "guest rebooted")
        await self._notify(runtime)
        return runtime
