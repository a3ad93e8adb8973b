"""QemuDriver against real QEMU under TCG: boot, pause, stop, reboot, adopt, failures."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.compute.helpers import console_text, wait_until

from bramble.compute.arch import ARCH_PROFILES, ArchProfile
from bramble.compute.driver import ComputeError, DiskAttachment, PowerState, VmSpec
from bramble.compute.qemu.driver import QemuDriver

pytestmark = [pytest.mark.qemu, pytest.mark.anyio]

MARKER = "BRAMBLE-GUEST-UP"
LivePids = Callable[[str], set[int]]
MakeSpec = Callable[..., VmSpec]


async def wait_marker(driver: QemuDriver, vm_id: str, count: int = 1, deadline: float = 180) -> float:
    """Seconds until the guest's console shows the boot marker ``count`` times."""
    started = time.monotonic()
    await wait_until(
        lambda: console_text(driver, vm_id).count(MARKER) >= count,
        deadline,
        f"{MARKER} x{count} on the console of {vm_id}",
    )
    return time.monotonic() - started


def free_vnc_display() -> int:
    """A VNC display whose port (5900 + n) is free on localhost right now."""
    for display in range(40, 400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 5900 + display))
            except OSError:
                continue
            return display
    raise AssertionError("no free VNC port")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
async def test_guest_boots_to_the_marker(
    driver: QemuDriver, make_spec: MakeSpec, live_qemus: LivePids, arch: str
) -> None:
    spec = make_spec(arch)
    started = await driver.start(spec)
    assert started.state == PowerState.RUNNING
    assert started.extra["accel"] == "tcg"
    assert live_qemus(spec.vm_id) == {started.pid}

    seconds = await wait_marker(driver, spec.vm_id)
    print(f"{arch}: {MARKER} after {seconds:.1f}s")  # shown with pytest -s
    console = console_text(driver, spec.vm_id)
    assert f"{MARKER} arch={arch}" in console
    assert "BRAMBLE-GUEST-DISKS vda" in console  # the qcow2 disk reached the guest

    status = await driver.status(spec.vm_id)
    assert (status.state, status.pid) == (PowerState.RUNNING, started.pid)
    vm_dir = Path(driver.console_path(spec.vm_id)).parent
    assert {"qmp.sock", "qemu.pid", "console.log", "spec.json"} <= {p.name for p in vm_dir.iterdir()}

    stopped = await driver.stop(spec.vm_id, force=True)
    assert (stopped.state, stopped.reason) == (PowerState.STOPPED, "forced stop")
    assert not live_qemus(spec.vm_id)
    await driver.cleanup(spec.vm_id)
    assert [p.name for p in vm_dir.iterdir()] == ["console.log"]


async def test_pause_and_resume(driver: QemuDriver, make_spec: MakeSpec, events: Any) -> None:
    spec = make_spec()
    started = await driver.start(spec)

    paused = await driver.pause(spec.vm_id)
    assert paused.state == PowerState.PAUSED
    status = await driver.status(spec.vm_id)
    assert (status.state, status.extra["qemu_status"]) == (PowerState.PAUSED, "paused")
    await wait_until(lambda: "paused" in events.reasons(spec.vm_id), 30, "the paused callback")
    assert (await driver.pause(spec.vm_id)).state == PowerState.PAUSED  # idempotent

    resumed = await driver.resume(spec.vm_id)
    assert (resumed.state, resumed.pid) == (PowerState.RUNNING, started.pid)
    assert (await driver.status(spec.vm_id)).state == PowerState.RUNNING
    await wait_until(lambda: "resumed" in events.reasons(spec.vm_id), 30, "the resumed callback")
    paused_cb = next(r for r in events.seen if r.reason == "paused")
    assert paused_cb.state == PowerState.PAUSED


async def test_acpi_stop_lets_the_guest_power_off(
    driver: QemuDriver, make_spec: MakeSpec, live_qemus: LivePids, events: Any
) -> None:
    spec = make_spec("x86_64")
    await driver.start(spec)
    await wait_marker(driver, spec.vm_id)  # acpid is listening once the marker is out

    began = time.monotonic()
    stopped = await driver.stop(spec.vm_id, timeout=60)  # returns as soon as the guest is off

    assert stopped.state == PowerState.STOPPED
    assert stopped.reason == "guest shut down"
    assert stopped.extra["stop_method"] == "acpi"  # no quit, no SIGKILL
    assert stopped.extra["shutdown_reason"] == "guest-shutdown"
    assert time.monotonic() - began < 60
    assert not live_qemus(spec.vm_id)
    await wait_until(lambda: "guest shut down" in events.reasons(spec.vm_id), 30, "the stop callback")
    again = await driver.stop(spec.vm_id)  # stopping a stopped VM is fine
    assert (again.state, again.reason) == (PowerState.STOPPED, "guest shut down")
    assert (await driver.status(spec.vm_id)).state == PowerState.STOPPED


async def test_hard_stop_when_the_guest_ignores_acpi(
    driver: QemuDriver, make_spec: MakeSpec, live_qemus: LivePids
) -> None:
    spec = make_spec("x86_64", cmdline="quiet bramble.acpid=off")
    await driver.start(spec)
    await wait_marker(driver, spec.vm_id)

    began = time.monotonic()
    stopped = await driver.stop(spec.vm_id, timeout=2)

    assert time.monotonic() - began >= 2
    assert stopped.state == PowerState.STOPPED
    assert stopped.reason == "hard stop: the guest did not shut down within 2s"
    assert stopped.extra["stop_method"] == "quit"
    assert not live_qemus(spec.vm_id)


async def test_reboot_boots_the_guest_again(
    driver: QemuDriver, make_spec: MakeSpec, live_qemus: LivePids, events: Any
) -> None:
    spec = make_spec("x86_64")
    started = await driver.start(spec)
    await wait_marker(driver, spec.vm_id)

    rebooted = await driver.reboot(spec.vm_id)

    assert (rebooted.state, rebooted.pid) == (PowerState.RUNNING, started.pid)
    await wait_marker(driver, spec.vm_id, count=2)
    assert "reset by the host" in events.reasons(spec.vm_id)
    assert live_qemus(spec.vm_id) == {started.pid}  # same process, no second one


async def test_unexpected_exit_is_reported_as_a_crash(
    driver: QemuDriver, make_spec: MakeSpec, live_qemus: LivePids, events: Any
) -> None:
    spec = make_spec()
    started = await driver.start(spec)
    assert started.pid is not None and live_qemus(spec.vm_id) == {started.pid}

    os.kill(started.pid, signal.SIGKILL)  # the QEMU this test started, PID verified above

    await wait_until(lambda: any(r.state == PowerState.CRASHED for r in events.seen), 30, "a crash report")
    status = await driver.status(spec.vm_id)
    assert (status.state, status.reason) == (PowerState.CRASHED, "qemu exited unexpectedly")
    # a crashed VM can be started again
    assert (await driver.start(spec)).state == PowerState.RUNNING


async def test_adopt_after_a_daemon_restart(runtime_dir: Path, make_spec: MakeSpec, live_qemus: LivePids) -> None:
    first = QemuDriver(runtime_dir)
    running, held = make_spec(), make_spec()
    a = await first.start(running)
    b = await first.start(held)
    await first.pause(held.vm_id)
    await first.close()
    # the VMs outlive the driver (as they outlive a kill -9 of the daemon)
    assert live_qemus(running.vm_id) == {a.pid}
    assert live_qemus(held.vm_id) == {b.pid}

    # a VM directory whose QEMU is gone: its PID belongs to an exited process
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = runtime_dir / str(uuid.uuid4())
    stale.mkdir()
    (stale / "qemu.pid").write_text(f"{gone.pid}\n")
    (stale / "spec.json").write_text("{}")
    # a cleaned-up VM directory: only its console log is left
    (runtime_dir / str(uuid.uuid4())).mkdir()

    second = QemuDriver(runtime_dir)
    try:
        adopted = {r.vm_id: r for r in await second.adopt()}

        assert set(adopted) == {running.vm_id, held.vm_id, stale.name}
        assert (adopted[running.vm_id].state, adopted[running.vm_id].pid) == (PowerState.RUNNING, a.pid)
        assert (adopted[held.vm_id].state, adopted[held.vm_id].pid) == (PowerState.PAUSED, b.pid)
        assert (adopted[stale.name].state, adopted[stale.name].pid) == (PowerState.STOPPED, None)

        again = await second.start(running)
        assert (again.pid, again.reason) == (a.pid, "already running")
        assert live_qemus(running.vm_id) == {a.pid}  # no second process
        again_adopted = {r.vm_id: r.pid for r in await second.adopt()}  # adopting twice is harmless
        assert again_adopted == {running.vm_id: a.pid, held.vm_id: b.pid, stale.name: None}

        # the adopted VMs are fully under control again
        assert (await second.resume(held.vm_id)).state == PowerState.RUNNING
        stopped = await second.stop(running.vm_id, force=True)
        assert stopped.state == PowerState.STOPPED
        assert not live_qemus(running.vm_id)
    finally:
        await second.close()


STARTER = """
import asyncio, sys, time
from pathlib import Path
from bramble.compute.driver import VmSpec
from bramble.compute.qemu.driver import QemuDriver

async def main():
    spec = VmSpec(vm_id=sys.argv[2], name="orphan", arch="x86_64", cpus=1, memory_mib=128)
    runtime = await QemuDriver(Path(sys.argv[1])).start(spec)
    print(runtime.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_vm_survives_a_kill9_of_the_process_that_started_it(runtime_dir: Path, live_qemus: LivePids) -> None:
    vm_id = str(uuid.uuid4())
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(runtime_dir), vm_id], stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        pid = int(await asyncio.to_thread(starter.stdout.readline))
    finally:
        starter.kill()  # our own child, by PID: SIGKILL, no chance to clean up
        starter.wait()

    assert live_qemus(vm_id) == {pid}
    driver = QemuDriver(runtime_dir)
    try:
        [adopted] = await driver.adopt()
        assert (adopted.vm_id, adopted.state, adopted.pid) == (vm_id, PowerState.RUNNING, pid)
        assert (await driver.stop(vm_id, force=True)).state == PowerState.STOPPED
    finally:
        await driver.close()
    assert not live_qemus(vm_id)


async def test_corrupt_qcow2_fails_with_qemus_reason(
    driver: QemuDriver, make_spec: MakeSpec, runtime_dir: Path, live_qemus: LivePids
) -> None:
    bad = runtime_dir / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"garbage!" * 512)
    spec = make_spec(disks=(DiskAttachment(str(bad)),))

    with pytest.raises(ComputeError) as failure:
        await driver.start(spec)

    message = str(failure.value)
    assert message.startswith("qemu-system-x86_64: -blockdev ")
    assert "qcow2" in message  # "Unsupported qcow2 version ..."
    assert not live_qemus(spec.vm_id)
    vm_dir = runtime_dir / spec.vm_id
    assert not (vm_dir / "qmp.sock").exists() and not (vm_dir / "qemu.pid").exists()
    assert (await driver.status(spec.vm_id)).state == PowerState.STOPPED


async def test_missing_kernel_fails_with_qemus_reason(
    driver: QemuDriver, make_spec: MakeSpec, runtime_dir: Path, live_qemus: LivePids
) -> None:
    spec = make_spec(kernel="/nonexistent/vmlinuz")

    with pytest.raises(ComputeError, match="could not open kernel file '/nonexistent/vmlinuz'"):
        await driver.start(spec)

    assert not live_qemus(spec.vm_id)
    vm_dir = runtime_dir / spec.vm_id
    assert not (vm_dir / "qmp.sock").exists() and not (vm_dir / "qemu.pid").exists()


async def test_long_runtime_paths_still_reach_qmp(runtime_dir: Path, make_spec: MakeSpec, live_qemus: LivePids) -> None:
    """Unix socket addresses hold 107 bytes; a deep state dir plus a uuid is longer."""
    deep = runtime_dir / ("d" * 60) / ("e" * 40)
    spec = make_spec(kernel=None, initrd=None, cmdline=None)
    first = QemuDriver(deep)
    try:
        started = await first.start(spec)
        assert started.extra["qemu_status"] == "running"  # answered over QMP
    finally:
        await first.close()
    second = QemuDriver(deep)
    try:
        adopted = await second.adopt()
        assert [(r.vm_id, r.pid, r.extra.get("qmp")) for r in adopted] == [(spec.vm_id, started.pid, None)]
        assert (await second.stop(spec.vm_id, force=True)).state == PowerState.STOPPED
    finally:
        await second.close()
    assert not live_qemus(spec.vm_id)


@pytest.mark.parametrize("profile", list(ARCH_PROFILES.values()), ids=lambda p: p.name)
async def test_every_profile_command_line_starts(
    driver: QemuDriver, runtime_dir: Path, live_qemus: LivePids, profile: ArchProfile
) -> None:
    """Each profile's full command line (disk, cd-rom, VNC) is accepted by its QEMU."""
    if shutil.which(profile.qemu_binary) is None:
        pytest.skip(f"{profile.qemu_binary} not installed")
    disk = runtime_dir / f"{profile.name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    iso = runtime_dir / f"{profile.name}.iso"
    iso.write_bytes(bytes(1 << 20))
    spec = VmSpec(
        vm_id=str(uuid.uuid4()),
        name=f"smoke-{profile.name}",
        arch=profile.name,
        cpus=1,
        memory_mib=max(256, profile.min_memory_mib),
        disks=(DiskAttachment(str(disk)), DiskAttachment(str(iso), format="iso", media="cdrom")),
        vnc_display=free_vnc_display(),
    )

    try:
        started = await driver.start(spec)  # a bad command line fails here with QEMU's message
    except ComputeError as exc:
        # QEMU accepted everything, ran the firmware and found nothing to boot (s390x
        # panics and exits at once): the command line is fine
        assert str(exc).startswith("qemu exited right after starting"), exc
        assert not live_qemus(spec.vm_id)
        return
    # without a kernel some machines pause (pseries/VOF) or stop soon (s390x)
    assert started.state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED)
    stopped = await driver.stop(spec.vm_id, force=True)
    assert stopped.state in (PowerState.STOPPED, PowerState.CRASHED)
    assert not live_qemus(spec.vm_id)
