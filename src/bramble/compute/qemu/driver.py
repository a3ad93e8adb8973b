"""QemuDriver: one daemonized QEMU process per VM, driven over QMP.

QEMU is started with ``-daemonize``, so it is not our child and survives a crash or a
restart of the daemon; everything we need to find it again lives in
``<runtime_dir>/<vm_id>/`` (qmp.sock, qemu.pid, console.log, spec.json). Processes are
only ever signalled through a pidfd opened after checking ``/proc/PID/cmdline`` names
the VM, so a recycled PID can never make us kill a stranger.

Each VM has a monitor task that follows QMP events (STOP, RESUME, RESET, SHUTDOWN) and
the process exit (the pidfd becomes readable), and reports changes through the state
callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient, QMPError
from qemu.qmp.protocol import Runstate

from bramble.compute.arch import ArchProfile, UnknownArch, canonical_arch, get_profile, host_arch
from bramble.compute.driver import ComputeDriver, ComputeError, DiskAttachment, PowerState, VmRuntime, VmSpec
from bramble.compute.qemu.cmdline import RuntimePaths, build_argv, disk_blockdev, socket_too_long
from bramble.processes import open_verified, pidfd_exited

log = logging.getLogger(__name__)

_EXIT_EVENT = "BRAMBLE_PROCESS_EXIT"  # sentinel queued after the process is gone


class _Listener(EventListener):
    """An event queue without the library's ever-growing history list."""

    async def put(self, event: Any) -> None:
        if self.accept(event):
            await self._queue.put(event)


@dataclasses.dataclass(eq=False)
class _Vm:
    """What the driver holds for one live QEMU process."""

    vm_id: str
    pid: int
    pidfd: int
    paths: RuntimePaths
    qmp: QMPClient | None
    listener: _Listener | None
    state: PowerState
    accel: str = ""
    qemu_status: str = ""
    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    shutdown: dict[str, Any] | None = None  # data of the SHUTDOWN event, if one came
    powerdown_requested: bool = False
    stop_reason: str | None = None  # set when the driver ends the process itself
    stop_method: str | None = None
    monitor: asyncio.Task[None] | None = None
    final: VmRuntime | None = None


def _map_status(status: str) -> PowerState:
    """QMP query-status 'status' to a PowerState."""
    if status == "running":
        return PowerState.RUNNING
    if status in ("guest-panicked", "internal-error"):
        return PowerState.CRASHED
    if status == "shutdown":
        return PowerState.STOPPED
    return PowerState.PAUSED  # paused, prelaunch, io-error, suspended, inmigrate, ...


def open_verified_pid(pid: int, vm_id: str) -> int | None:
    """A pidfd for ``pid`` if it is a live QEMU whose command line names ``vm_id``, else None.

    "Names" means a path argument with ``/<vm_id>/`` in it (the VM's runtime directory),
    so short ids cannot match by accident. The pidfd is opened before /proc is read and
    liveness is re-checked afterwards, so the command line we checked is that of the
    process the pidfd refers to.
    """
    return open_verified(pid, b"qemu-system", f"/{vm_id}/".encode())


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _last_line(path: Path, offset: int) -> str:
    """The last non-empty console line written after ``offset`` (what the guest said last)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(offset, path.stat().st_size - 4096))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class QemuDriver(ComputeDriver):
    """Runs VMs as daemonized QEMU processes; see the module docstring."""

    name = "qemu"

    def __init__(
        self,
        runtime_dir: Path,
        accel: str = "tcg",
        stop_timeout: float = 30.0,
        *,
        start_timeout: float = 60.0,
        qmp_timeout: float = 10.0,
    ) -> None:
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"accel must be kvm or tcg, not {accel!r}")
        self.runtime_dir = Path(runtime_dir).absolute()
        self.accel = accel
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.qmp_timeout = qmp_timeout
        self._vms: dict[str, _Vm] = {}
        self._last: dict[str, VmRuntime] = {}  # how VMs that are gone ended
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ helpers

    def _paths(self, vm_id: str) -> RuntimePaths:
        if not vm_id or "/" in vm_id or vm_id in (".", ".."):
            raise ComputeError(f"invalid vm id {vm_id!r}")
        return RuntimePaths.for_vm(self.runtime_dir, vm_id)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _effective_accel(self, spec: VmSpec, profile: ArchProfile) -> str:
        """KVM only when the node has it, the spec asks for it and the guest matches the host."""
        try:
            native = host_arch() in profile.kvm_capable_hosts
        except UnknownArch:
            native = False
        return "kvm" if self.accel == "kvm" and spec.accel == "kvm" and native else "tcg"

    def _runtime(self, vm: _Vm, reason: str = "") -> VmRuntime:
        extra = {"qemu_status": vm.qemu_status, "console": str(vm.paths.console_log)}
        if vm.accel:
            extra["accel"] = vm.accel
        if vm.qmp is None:
            extra["qmp"] = "unavailable"
        return VmRuntime(vm.vm_id, vm.state, vm.pid, reason, extra)

    def _live(self, vm_id: str) -> _Vm | None:
        vm = self._vms.get(vm_id)
        return vm if vm is not None and not vm.exited.is_set() else None

    async def _current(self, vm_id: str) -> _Vm | None:
        """The live VM (attaching to one started in an earlier life), or None.

        A VM whose process just exited is given a moment so its monitor can record
        how it ended before callers look at ``_last``.
        """
        vm = self._vms.get(vm_id)
        if vm is not None and vm.exited.is_set():
            await self._wait_done(vm, 15)
            vm = None
        return vm or await self._attach(vm_id)

    async def _safe_notify(self, runtime: VmRuntime) -> None:
        try:
            await self._notify(runtime)
        except Exception:
            log.exception("state callback failed for %s", runtime.vm_id)

    async def _qmp(self, vm: _Vm, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command with a deadline; failures become ComputeError."""
        if vm.qmp is None or vm.qmp.runstate != Runstate.RUNNING:
            raise ComputeError(f"vm {vm.vm_id}: no QMP connection to qemu (pid {vm.pid})")
        try:
            async with asyncio.timeout(self.qmp_timeout):
                return await vm.qmp.execute(command, arguments)
        except TimeoutError:
            raise ComputeError(f"vm {vm.vm_id}: qemu did not answer {command} within {self.qmp_timeout:g}s") from None
        except QMPError as exc:
            raise ComputeError(f"vm {vm.vm_id}: {command} failed: {exc}") from exc

    async def _connect(self, paths: RuntimePaths) -> tuple[QMPClient, _Listener]:
        client = QMPClient(f"bramble-{paths.directory.name}")
        client.events.names = {"BRAMBLE-NONE"}  # keep the default listener from piling up events
        listener = _Listener()
        client.register_listener(listener)
        dirfd = -1
        try:
            address = str(paths.qmp_socket)
            if socket_too_long(paths.qmp_socket):
                # reach it through a short path naming the open directory
                dirfd = os.open(paths.directory, os.O_PATH | os.O_DIRECTORY)
                address = f"/proc/self/fd/{dirfd}/{paths.qmp_socket.name}"
            async with asyncio.timeout(self.qmp_timeout):
                await client.connect(address)
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        return client, listener

    async def _refresh(self, vm: _Vm) -> None:
        if vm.qmp is None:
            return
        status = await self._qmp(vm, "query-status")
        vm.qemu_status = str(status.get("status", ""))
        vm.state = _map_status(vm.qemu_status)

    async def _attach(self, vm_id: str) -> _Vm | None:
        """Take charge of an already running QEMU for ``vm_id`` (never starts anything)."""
        paths = self._paths(vm_id)
        pid = _read_pid(paths.pidfile)
        if pid is None:
            return None
        pidfd = open_verified_pid(pid, vm_id)
        if pidfd is None:
            return None
        accel = ""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            accel = str(json.loads(paths.spec_file.read_text()).get("accel", ""))
        qmp: QMPClient | None = None
        listener: _Listener | None = None
        try:
            qmp, listener = await self._connect(paths)
        except (QMPError, OSError, TimeoutError) as exc:
            log.warning("vm %s (pid %d): cannot connect QMP: %s", vm_id, pid, exc)
        vm = _Vm(vm_id, pid, pidfd, paths, qmp, listener, PowerState.RUNNING, accel=accel)
        try:
            await self._refresh(vm)
        except ComputeError as exc:
            log.warning("vm %s: %s", vm_id, exc)
        self._vms[vm_id] = vm
        self._last.pop(vm_id, None)
        vm.monitor = asyncio.create_task(self._monitor(vm), name=f"qemu-monitor-{vm_id}")
        return vm

    # ------------------------------------------------------------------ monitor

    async def _monitor(self, vm: _Vm) -> None:
        """Follow one VM's events until its process exits, then report how it ended."""
        loop = asyncio.get_running_loop()
        loop.add_reader(vm.pidfd, vm.exited.set)
        events = None
        if vm.listener is not None:
            events = asyncio.create_task(self._follow_events(vm), name=f"qemu-events-{vm.vm_id}")
        try:
            await vm.exited.wait()
        except asyncio.CancelledError:
            if events is not None:
                events.cancel()
            raise
        finally:
            loop.remove_reader(vm.pidfd)
        try:
            # the SHUTDOWN event may still sit in the socket: read up to qemu's end of file
            if vm.qmp is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        while vm.qmp.runstate == Runstate.RUNNING:
                            await vm.qmp.runstate_changed()
            if events is not None and vm.listener is not None:
                await vm.listener.put({"event": _EXIT_EVENT})
                await asyncio.wait({events}, timeout=10)
                events.cancel()
            await self._release(vm)
        except Exception:
            log.exception("vm %s: error while recording the exit of qemu (pid %d)", vm.vm_id, vm.pid)
        final = self._exit_runtime(vm)
        vm.final = final
        vm.state = final.state
        if self._vms.get(vm.vm_id) is vm:
            del self._vms[vm.vm_id]
        self._last[vm.vm_id] = final
        vm.done.set()
        await self._safe_notify(final)

    async def _follow_events(self, vm: _Vm) -> None:
        assert vm.listener is not None
        async for event in vm.listener:
            name = event["event"]
            raw = event.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if name == _EXIT_EVENT:
                return
            if name == "SHUTDOWN":
                vm.shutdown = data
            elif name == "STOP":
                vm.state, vm.qemu_status = PowerState.PAUSED, "paused"
                await self._safe_notify(self._runtime(vm, "paused"))
            elif name == "RESUME":
                vm.state, vm.qemu_status = PowerState.RUNNING, "running"
                await self._safe_notify(self._runtime(vm, "resumed"))
            elif name == "RESET":
                reason = "guest rebooted" if data.get("guest") else "reset by the host"
                await self._safe_notify(self._runtime(vm, reason))

    def _exit_runtime(self, vm: _Vm) -> VmRuntime:
        """How the process ended, in words, from what we did and the last SHUTDOWN event."""
        shutdown = vm.shutdown or {}
        cause = str(shutdown.get("reason", ""))
        state = PowerState.STOPPED
        extra: dict[str, str] = {"console": str(vm.paths.console_log)}
        if vm.stop_reason is not None:
            reason = vm.stop_reason
            extra["stop_method"] = vm.stop_method or ""
        elif shutdown.get("guest") and cause == "guest-panic":
            state, reason = PowerState.CRASHED, "guest panicked"
        elif shutdown.get("guest"):
            reason = "guest shut down"
            if vm.powerdown_requested:
                extra["stop_method"] = "acpi"
        elif cause == "host-signal":
            reason = "qemu exited on a signal"
        elif cause:
            reason = f"qemu exited ({cause})"
        else:
            state, reason = PowerState.CRASHED, "qemu exited unexpectedly"
        if cause:
            extra["shutdown_reason"] = cause
        return VmRuntime(vm.vm_id, state, None, reason, extra)

    async def _release(self, vm: _Vm) -> None:
        """Drop our handles on one VM (QMP connection, pidfd); the process is untouched."""
        if vm.qmp is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await vm.qmp.disconnect()
        if vm.pidfd >= 0:
            os.close(vm.pidfd)
            vm.pidfd = -1

    async def _wait_done(self, vm: _Vm, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await vm.done.wait()
        except TimeoutError:
            return False
        return True

    async def _kill(self, vm: _Vm) -> None:
        if vm.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(vm.pidfd, signal.SIGKILL)

    # ------------------------------------------------------------------ start

    async def start(self, spec: VmSpec) -> VmRuntime:
        async with self._lock(spec.vm_id):
            vm = await self._current(spec.vm_id)
            if vm is not None:
                return self._runtime(vm, "already running")
            return await self._start(spec)

    async def _start(self, spec: VmSpec) -> VmRuntime:
        try:
            profile = get_profile(spec.arch)
        except UnknownArch as exc:
            raise ComputeError(str(exc)) from None
        if spec.memory_mib < profile.min_memory_mib:
            raise ComputeError(
                f"{profile.name} guests need at least {profile.min_memory_mib} MiB of memory "
                f"(asked for {spec.memory_mib})"
            )
        paths = self._paths(spec.vm_id)
        accel = self._effective_accel(spec, profile)
        try:
            argv = build_argv(spec, profile, paths, accel=accel)
        except ValueError as exc:
            raise ComputeError(str(exc)) from None

        paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_runtime_files(paths)
        try:
            console_start = paths.console_log.stat().st_size
        except FileNotFoundError:
            console_start = 0
        record = {**dataclasses.asdict(spec), "arch": canonical_arch(spec.arch), "accel": accel}
        record |= {"argv": argv, "started_at": time.time()}
        tmp = paths.spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(paths.spec_file)

        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                cwd=paths.directory,  # a too long QMP socket path is bound relative to it
            )
        except OSError as exc:
            raise ComputeError(f"cannot run {argv[0]}: {exc}") from None
        try:
            async with asyncio.timeout(self.start_timeout):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()  # the launcher is our child
            await proc.wait()
            await self._kill_stray(paths, spec.vm_id)
            self._remove_runtime_files(paths)
            raise ComputeError(f"qemu did not finish starting within {self.start_timeout:g}s") from None
        stderr = err.decode(errors="replace").strip()
        if proc.returncode != 0:
            await self._kill_stray(paths, spec.vm_id)
            self._remove_runtime_files(paths)
            raise ComputeError(stderr or f"qemu failed to start (exit status {proc.returncode})")
        if stderr:
            log.warning("vm %s: qemu: %s", spec.vm_id, stderr)

        vm = await self._attach(spec.vm_id)
        gone = vm is None or vm.exited.is_set() or vm.pidfd < 0 or pidfd_exited(vm.pidfd)
        if vm is not None and vm.qmp is None and not gone:
            await self._kill(vm)
            await self._wait_done(vm, 10)
            self._remove_runtime_files(paths)
            raise ComputeError(f"cannot connect to qemu's QMP socket {paths.qmp_socket}")
        if vm is None or vm.qmp is None:
            # the guest ended at once (e.g. nothing to boot): qemu itself started fine
            if vm is not None:
                await self._wait_done(vm, 10)
            self._remove_runtime_files(paths)
            last = _last_line(paths.console_log, console_start)
            raise ComputeError("qemu exited right after starting" + (f"; the console said: {last}" if last else ""))
        return self._runtime(vm, "started")

    async def _kill_stray(self, paths: RuntimePaths, vm_id: str) -> None:
        """After a failed start: kill a QEMU that got as far as writing its pidfile."""
        pid = _read_pid(paths.pidfile)
        pidfd = open_verified_pid(pid, vm_id) if pid is not None else None
        if pidfd is None:
            return
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(pidfd, gone.set)
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await gone.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    @staticmethod
    def _remove_runtime_files(paths: RuntimePaths) -> None:
        for path in (paths.qmp_socket, paths.pidfile):
            _unlink(path)

    # ------------------------------------------------------------------ stop

    async def stop(self, vm_id: str, *, force: bool = False, timeout: float | None = None) -> VmRuntime:
        """ACPI powerdown, then ``quit`` after ``timeout`` (driver default when None), then SIGKILL.

        A paused guest cannot react to the power button, so it is stopped hard at once.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        async with self._lock(vm_id):
            vm = await self._current(vm_id)
            if vm is None:
                return self._last.get(vm_id) or VmRuntime(vm_id, PowerState.STOPPED, None, "not running")
            if force:
                reason = "forced stop"
            elif vm.state != PowerState.RUNNING:
                reason = f"hard stop: the vm was {vm.state.value}"
            else:
                vm.powerdown_requested = True
                try:
                    await self._qmp(vm, "system_powerdown")
                except ComputeError as exc:
                    reason = f"hard stop: ACPI powerdown failed ({exc})"
                else:
                    if await self._wait_done(vm, timeout):
                        assert vm.final is not None
                        return vm.final
                    reason = f"hard stop: the guest did not shut down within {timeout:g}s"
            return await self._hard_stop(vm, reason)

    async def _hard_stop(self, vm: _Vm, reason: str) -> VmRuntime:
        vm.stop_reason, vm.stop_method = reason, "quit"
        try:
            await self._qmp(vm, "quit")
            quit_sent = True
        except ComputeError:
            quit_sent = False
        if not (quit_sent and await self._wait_done(vm, 5)) and not vm.done.is_set():
            vm.stop_reason, vm.stop_method = f"{reason} (killed)", "sigkill"
            await self._kill(vm)
            if not await self._wait_done(vm, 10):
                raise ComputeError(f"vm {vm.vm_id}: qemu (pid {vm.pid}) survived SIGKILL")
        assert vm.final is not None
        return vm.final

    # ------------------------------------------------------------------ other actions

    async def _require(self, vm_id: str) -> _Vm:
        vm = await self._current(vm_id)
        if vm is None:
            raise ComputeError(f"vm {vm_id} is not running")
        return vm

    async def reboot(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            vm = await self._require(vm_id)
            await self._qmp(vm, "system_reset")
            await self._refresh(vm)
            return self._runtime(vm, "reset")

    async def pause(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            vm = await self._require(vm_id)
            await self._qmp(vm, "stop")
            await self._refresh(vm)
            return self._runtime(vm, "paused")

    async def resume(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            vm = await self._require(vm_id)
            await self._qmp(vm, "cont")
            await self._refresh(vm)
            return self._runtime(vm, "resumed")

    async def status(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            vm = await self._current(vm_id)
            if vm is None:
                return self._last.get(vm_id) or VmRuntime(vm_id, PowerState.STOPPED, None, "not running")
            with contextlib.suppress(ComputeError):
                await self._refresh(vm)
            return self._runtime(vm)

    async def adopt(self) -> list[VmRuntime]:
        """Re-attach to the VMs of an earlier daemon life found in ``runtime_dir``.

        Live, verified QEMU processes come back RUNNING/PAUSED with their QMP
        connection and monitor; directories whose process is gone are reported
        STOPPED (cleaned-up ones, holding only console.log, are skipped).
        """
        found: list[VmRuntime] = []
        if not self.runtime_dir.is_dir():
            return found
        for entry in sorted(self.runtime_dir.iterdir()):
            if not entry.is_dir():
                continue
            vm_id = entry.name
            async with self._lock(vm_id):
                vm = await self._current(vm_id)
                if vm is not None:
                    found.append(self._runtime(vm, "adopted"))
                    continue
                paths = self._paths(vm_id)
                if any(p.exists() for p in (paths.pidfile, paths.qmp_socket, paths.spec_file)):
                    last = self._last.get(vm_id)
                    found.append(last or VmRuntime(vm_id, PowerState.STOPPED, None, "qemu is not running"))
        return found

    async def cleanup(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            paths = self._paths(vm_id)
            if self._live(vm_id) is not None:
                raise ComputeError(f"vm {vm_id} is running; stop it before cleaning up")
            pid = _read_pid(paths.pidfile)
            pidfd = open_verified_pid(pid, vm_id) if pid is not None else None
            if pidfd is not None:
                os.close(pidfd)
                raise ComputeError(f"vm {vm_id} is running (pid {pid}); stop it before cleaning up")
            self._remove_runtime_files(paths)
            for path in (paths.spec_file, paths.spec_file.with_suffix(".tmp")):
                _unlink(path)
            self._last.pop(vm_id, None)

    def console_path(self, vm_id: str) -> str:
        return str(self._paths(vm_id).console_log)

    # ------------------------------------------------------------------ disk hot-plug
    def _running(self, vm_id: str) -> _Vm:
        vm = self._live(vm_id)
        if vm is None:
            raise ComputeError(f"vm {vm_id} is not running on this node")
        return vm

    async def attach_disk(self, vm_id: str, disk: DiskAttachment) -> None:
        """blockdev-add (format over file or rbd), then a virtio-blk device on it; undone if the device fails."""
        if not disk.node_name:
            raise ComputeError("a hot-plugged disk needs a node name")
        try:
            options = disk_blockdev(disk, disk.node_name)
        except ValueError as exc:
            raise ComputeError(str(exc)) from None
        async with self._lock(vm_id):
            vm = self._running(vm_id)
            await self._qmp(vm, "blockdev-add", options)
            try:
                await self._qmp(
                    vm,
                    "device_add",
                    {"driver": "virtio-blk-pci", "drive": disk.node_name, "id": f"{disk.node_name}-dev"},
                )
            except ComputeError:
                with contextlib.suppress(ComputeError):
                    await self._qmp(vm, "blockdev-del", {"node-name": disk.node_name})
                raise

    async def detach_disk(self, vm_id: str, node_name: str, *, timeout: float = 30.0) -> None:
        """device_del asks the guest to let go; the block node can only go once the device has.

        Waiting by retrying blockdev-del (refused while the device holds the node) sees the same
        moment as the DEVICE_DELETED event without a second reader of the event stream.
        """
        async with self._lock(vm_id):
            vm = self._running(vm_id)
            with contextlib.suppress(ComputeError):  # already gone: only the node is left
                await self._qmp(vm, "device_del", {"id": f"{node_name}-dev"})
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await self._qmp(vm, "blockdev-del", {"node-name": node_name})
                    return
                except ComputeError as exc:
                    if "not found" in str(exc).lower() or "cannot find" in str(exc).lower():
                        return
                    if time.monotonic() > deadline:
                        raise ComputeError(
                            f"vm {vm_id}: the guest did not release disk {node_name} within {timeout:g}s"
                        ) from None
                await asyncio.sleep(0.1)

    async def grow_disk(self, vm_id: str, node_name: str, size_bytes: int) -> None:
        async with self._lock(vm_id):
            await self._qmp(self._running(vm_id), "block_resize", {"node-name": node_name, "size": size_bytes})

    async def replace_disk(self, vm_id: str, node_name: str, disk: DiskAttachment, *, timeout: float = 600.0) -> None:
        """blockdev-add the new disk, blockdev-mirror (sync "top") onto it, job-complete, blockdev-del the old.

        "top" copies only what the old node's own layer holds (a cache overlay: the guest's
        writes); the target already has the backing data. The guest keeps running; after the
        pivot its device reads and writes the new node, and the old chain is closed. On failure
        the job is cancelled and the new node removed: the guest stays on the old disk.
        """
        if not disk.node_name:
            raise ComputeError("the new disk needs a node name")
        try:
            options = disk_blockdev(disk, disk.node_name)
        except ValueError as exc:
            raise ComputeError(str(exc)) from None
        job = f"move-{node_name}"
        async with self._lock(vm_id):
            vm = self._running(vm_id)
            await self._qmp(vm, "blockdev-add", options)
            try:
                mirror = {"job-id": job, "device": node_name, "target": disk.node_name, "sync": "top"}
                await self._qmp(vm, "blockdev-mirror", {**mirror, "auto-dismiss": False})
                await self._wait_job(vm, job, ("ready",), timeout)
                await self._qmp(vm, "job-complete", {"id": job})
                await self._wait_job(vm, job, ("concluded",), timeout)
                failure = next((j.get("error") for j in await self._qmp(vm, "query-jobs") if j["id"] == job), None)
                await self._qmp(vm, "job-dismiss", {"id": job})
                if failure:
                    raise ComputeError(f"vm {vm_id}: moving disk {node_name} failed: {failure}")
            except ComputeError:
                with contextlib.suppress(ComputeError):
                    await self._qmp(vm, "job-cancel", {"id": job, "force": True})
                    await self._wait_job(vm, job, ("concluded", "null"), 30)
                    await self._qmp(vm, "job-dismiss", {"id": job})
                with contextlib.suppress(ComputeError):
                    await self._qmp(vm, "blockdev-del", {"node-name": disk.node_name})
                raise
            # the old node was added by -blockdev: the monitor still holds it (and its files) open
            await self._qmp(vm, "blockdev-del", {"node-name": node_name})

    async def disk_read_bytes(self, vm_id: str) -> dict[str, int]:
        """query-blockstats: the guest-side read counter of each disk device (``disk0-dev``, ...)."""
        vm = self._running(vm_id)
        found: dict[str, int] = {}
        for entry in await self._qmp(vm, "query-blockstats"):
            parts = str(entry.get("qdev", "")).split("/")  # /machine/peripheral/<id>/virtio-backend
            if len(parts) > 3 and parts[2] == "peripheral":
                found[parts[3]] = int(entry.get("stats", {}).get("rd_bytes", 0))
        return found

    async def _wait_job(self, vm: _Vm, job: str, states: tuple[str, ...], timeout: float) -> None:
        """Poll query-jobs until ``job`` is in one of ``states`` ("null": gone), or raise."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = {j["id"]: j for j in await self._qmp(vm, "query-jobs")}
            status = str(jobs[job]["status"]) if job in jobs else "null"
            if status in states:
                return
            if status in ("concluded", "null"):
                error = jobs.get(job, {}).get("error", "it ended early")
                raise ComputeError(f"vm {vm.vm_id}: block job {job} ended before reaching {states[0]}: {error}")
            if time.monotonic() > deadline:
                raise ComputeError(f"vm {vm.vm_id}: block job {job} not {states[0]} within {timeout:g}s")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Stop following the VMs and drop QMP connections; the VMs keep running."""
        vms = list(self._vms.values())
        self._vms.clear()
        for vm in vms:
            if vm.monitor is not None:
                vm.monitor.cancel()
        for vm in vms:
            if vm.monitor is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await vm.monitor
            await self._release(vm)
