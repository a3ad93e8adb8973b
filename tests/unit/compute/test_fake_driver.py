"""FakeComputeDriver keeps the QemuDriver's contract, instantly and in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bramble.compute.driver import ComputeError, PowerState, VmRuntime, VmSpec
from bramble.compute.fake import FakeComputeDriver, FakeVm

pytestmark = pytest.mark.anyio


def spec(vm_id: str = "vm-1", name: str = "web", arch: str = "x86_64") -> VmSpec:
    return VmSpec(vm_id=vm_id, name=name, arch=arch, cpus=1, memory_mib=128)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[VmRuntime] = []

    async def __call__(self, runtime: VmRuntime) -> None:
        self.seen.append(runtime)

    def reasons(self) -> list[tuple[PowerState, str]]:
        return [(r.state, r.reason) for r in self.seen]


async def test_start_is_idempotent_and_gives_a_pid() -> None:
    driver = FakeComputeDriver()
    first = await driver.start(spec())
    again = await driver.start(spec())
    assert first.state == PowerState.RUNNING and first.pid is not None
    assert again.pid == first.pid and again.reason == "already running"
    assert (await driver.status("vm-1")).state == PowerState.RUNNING


async def test_pids_differ_between_vms_and_restarts() -> None:
    driver = FakeComputeDriver()
    a = await driver.start(spec("a"))
    b = await driver.start(spec("b"))
    await driver.stop("a")
    a2 = await driver.start(spec("a"))
    assert len({a.pid, b.pid, a2.pid}) == 3
    assert driver.vms["a"].boots == 2


@pytest.mark.parametrize("key", ["vm-1", "web"])
async def test_fail_start_by_id_or_name(key: str) -> None:
    driver = FakeComputeDriver(fail_start={key: "qemu-system-x86_64: Image is not in qcow2 format"})
    with pytest.raises(ComputeError, match="not in qcow2 format"):
        await driver.start(spec())
    assert (await driver.status("vm-1")).state == PowerState.STOPPED
    assert "vm-1" not in driver.vms
    # the knob can be cleared to simulate a fixed image
    driver.fail_start.clear()
    assert (await driver.start(spec())).state == PowerState.RUNNING


async def test_unknown_arch_is_a_compute_error() -> None:
    with pytest.raises(ComputeError, match="unknown architecture"):
        await FakeComputeDriver().start(spec(arch="vax"))


async def test_stop_reasons_match_the_qemu_driver() -> None:
    driver = FakeComputeDriver(ignore_powerdown={"stubborn"})
    recorder = Recorder()
    driver.set_state_callback(recorder)
    await driver.start(spec("a"))
    await driver.start(spec("b", name="stubborn"))
    await driver.start(spec("c"))
    await driver.start(spec("d"))
    await driver.pause("d")

    acpi = await driver.stop("a")
    hard = await driver.stop("b", timeout=5)
    forced = await driver.stop("c", force=True)
    paused = await driver.stop("d")

    assert (acpi.state, acpi.reason, acpi.extra["stop_method"]) == (PowerState.STOPPED, "guest shut down", "acpi")
    assert hard.reason == "hard stop: the guest did not shut down within 5s"
    assert hard.extra["stop_method"] == "quit"
    assert forced.reason == "forced stop"
    assert paused.reason == "hard stop: the vm was paused"
    assert all(r.pid is None for r in (acpi, hard, forced, paused))
    assert (PowerState.STOPPED, "guest shut down") in recorder.reasons()


async def test_stop_is_idempotent() -> None:
    driver = FakeComputeDriver()
    assert (await driver.stop("never-started")).state == PowerState.STOPPED
    await driver.start(spec())
    first = await driver.stop("vm-1")
    second = await driver.stop("vm-1")
    assert second.state == PowerState.STOPPED and second.reason == first.reason


async def test_pause_resume_reboot_notify() -> None:
    driver = FakeComputeDriver()
    recorder = Recorder()
    driver.set_state_callback(recorder)
    started = await driver.start(spec())

    assert (await driver.pause("vm-1")).state == PowerState.PAUSED
    assert (await driver.status("vm-1")).state == PowerState.PAUSED
    assert (await driver.resume("vm-1")).state == PowerState.RUNNING
    rebooted = await driver.reboot("vm-1")

    assert rebooted.pid == started.pid
    assert driver.vms["vm-1"].boots == 2
    assert recorder.reasons() == [
        (PowerState.PAUSED, "paused"),
        (PowerState.RUNNING, "resumed"),
        (PowerState.RUNNING, "reset by the host"),
    ]


@pytest.mark.parametrize("action", ["pause", "resume", "reboot"])
async def test_actions_on_a_stopped_vm_fail(action: str) -> None:
    driver = FakeComputeDriver()
    with pytest.raises(ComputeError, match="not running"):
        await getattr(driver, action)("vm-1")


async def test_guest_events_are_reported() -> None:
    driver = FakeComputeDriver()
    recorder = Recorder()
    driver.set_state_callback(recorder)
    for vm_id in ("a", "b", "c"):
        await driver.start(spec(vm_id))

    await driver.crash("a")
    await driver.guest_shutdown("b")
    await driver.guest_reboot("c")

    assert (await driver.status("a")).state == PowerState.CRASHED
    assert (await driver.status("b")).state == PowerState.STOPPED
    assert (await driver.status("c")).state == PowerState.RUNNING
    assert recorder.reasons() == [
        (PowerState.CRASHED, "qemu exited unexpectedly"),
        (PowerState.STOPPED, "guest shut down"),
        (PowerState.RUNNING, "guest rebooted"),
    ]


async def test_a_restarted_daemon_adopts_what_the_host_runs() -> None:
    host: dict[str, FakeVm] = {}
    before = FakeComputeDriver(host)
    running = await before.start(spec("run"))
    await before.start(spec("held"))
    await before.pause("held")
    await before.start(spec("dead"))
    await before.crash("dead")
    await before.close()
    assert before.closed

    after = FakeComputeDriver(host)
    adopted = {r.vm_id: r for r in await after.adopt()}

    assert adopted["run"].state == PowerState.RUNNING and adopted["run"].pid == running.pid
    assert adopted["held"].state == PowerState.PAUSED
    assert adopted["dead"].state == PowerState.CRASHED and adopted["dead"].pid is None
    # start() on an adopted VM does not start a second one
    again = await after.start(spec("run"))
    assert again.pid == running.pid and again.reason == "already running"


async def test_cleanup() -> None:
    driver = FakeComputeDriver()
    await driver.start(spec())
    with pytest.raises(ComputeError, match="running"):
        await driver.cleanup("vm-1")
    await driver.stop("vm-1")
    await driver.cleanup("vm-1")
    await driver.cleanup("vm-1")  # idempotent
    assert await driver.adopt() == []


async def test_console_log_when_asked(tmp_path: Path) -> None:
    driver = FakeComputeDriver(console_dir=tmp_path)
    await driver.start(spec(arch="arm64"))
    await driver.reboot("vm-1")
    console = Path(driver.console_path("vm-1"))
    assert console == tmp_path / "vm-1" / "console.log"
    assert console.read_text().count("BRAMBLE-GUEST-UP arch=aarch64") == 2


async def test_console_path_is_private_without_a_console_dir() -> None:
    """Callers delete a destroyed VM's console log: it must never be a shared file."""
    path = Path(FakeComputeDriver().console_path("vm-1"))
    assert path.name == "console.log" and path.parent.name == "vm-1"
    assert not str(path).startswith("/dev")


async def test_calls_are_recorded() -> None:
    driver = FakeComputeDriver()
    await driver.start(spec())
    await driver.stop("vm-1", force=True)
    assert driver.calls == [("start", "vm-1"), ("stop", "vm-1")]
