"""The agent converges actual state to desired state (fake driver, real database)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bramble.api.app import create_app
from bramble.compute.fake import FakeComputeDriver, FakeVm
from bramble.daemon import Services, build_services
from tests.conftest import fake_settings
from tests.unit.api.helpers import make_image, make_vm

pytestmark = pytest.mark.anyio


def _client(services: Services) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services.cloud)),
        base_url="http://bramble.test",
        headers={"Authorization": f"Bearer {services.admin_token}"},
    )


async def test_crashed_vm_is_restarted_and_shutdown_vm_is_not(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    crashy = await make_vm(api, "crashy")
    quiet = await make_vm(api, "quiet")
    agent = services.agent
    assert agent is not None
    compute = agent.compute
    assert isinstance(compute, FakeComputeDriver)

    await compute.crash(crashy["id"])
    await compute.guest_shutdown(quiet["id"])
    await agent.reconcile_once()

    after_crash = (await api.get("/v1/vms/crashy")).json()
    assert after_crash["state"] == "running" and after_crash["pid"] != crashy["pid"]
    after_shutdown = (await api.get("/v1/vms/quiet")).json()
    assert after_shutdown["state"] == "stopped" and after_shutdown["desired_state"] == "stopped"
    assert after_shutdown["state_reason"] == "guest shut down"
    states = (await api.get("/v1/events", params={"action": "vm.state"})).json()
    assert {e["target"] for e in states} >= {"vm/crashy", "vm/quiet"}


async def test_restart_adopts_running_vms_without_starting_them_twice(tmp_path: Path) -> None:
    host: dict[str, FakeVm] = {}
    settings = fake_settings(tmp_path / "state")
    first = await build_services(settings, compute=FakeComputeDriver(host))
    async with _client(first) as api:
        await make_image(api)
        pids = {name: (await make_vm(api, name))["pid"] for name in ("a", "b", "c")}
    await first.close()  # like a crash: VMs keep running on the fake host

    second_driver = FakeComputeDriver(host)
    second = await build_services(settings, compute=second_driver)
    try:
        async with _client(second) as api:
            vms = {vm["name"]: vm for vm in (await api.get("/v1/vms")).json()}
        assert {name: vm["pid"] for name, vm in vms.items()} == pids
        assert all(vm["state"] == "running" for vm in vms.values())
        assert not [call for call in second_driver.calls if call[0] == "start"]
        assert len([vm for vm in host.values() if vm.pid is not None]) == 3
    finally:
        await second.close()


async def test_orphan_qemu_is_reaped(tmp_path: Path) -> None:
    host: dict[str, FakeVm] = {}
    settings = fake_settings(tmp_path / "state")
    driver = FakeComputeDriver(host)
    from bramble.compute.driver import VmSpec

    await driver.start(VmSpec(vm_id="not-in-db", name="ghost", arch="x86_64", cpus=1, memory_mib=64))
    services = await build_services(settings, compute=FakeComputeDriver(host))
    try:
        assert (await services.agent.compute.status("not-in-db")).state.value == "stopped"  # type: ignore[union-attr]
        events = await services.cloud.events(action="vm.orphan_reaped")
        assert events and events[0].target == "vm/not-in-db"
    finally:
        await services.close()
