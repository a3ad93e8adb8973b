"""The VM life cycle through the real API on fake drivers."""

from __future__ import annotations

import httpx
import pytest

from bramble.daemon import Services
from tests.unit.api.helpers import make_image, make_vm, wait_operation

pytestmark = pytest.mark.anyio


async def test_create_boots_and_records_events(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    vm = await make_vm(api, "web1")
    assert vm["state"] == "running"
    assert vm["desired_state"] == "running"
    assert vm["node"] == "node-1"
    assert vm["pid"] is not None
    assert vm["vnc"].startswith("127.0.0.1:59")
    events = (await api.get("/v1/events", params={"target": "vm/web1"})).json()
    create = [e for e in events if e["action"] == "vm.create"]
    assert create and create[-1]["outcome"] == "ok"
    assert create[-1]["actor"] == "token:admin"
    assert create[-1]["after"]["state"] == "running"
    assert create[-1]["request_id"].startswith("req-")


async def test_power_actions_follow_state(api: httpx.AsyncClient) -> None:
    await make_image(api)
    await make_vm(api, "vm1")

    async def act(action: str, **body: object) -> dict:
        response = await api.post(f"/v1/vms/vm1/actions/{action}", json=body or None)
        assert response.status_code == 202, response.text
        op = await wait_operation(api, response.json()["operation"]["id"])
        assert op["status"] == "succeeded", op
        return (await api.get("/v1/vms/vm1")).json()

    assert (await act("pause"))["state"] == "paused"
    assert (await act("resume"))["state"] == "running"
    assert (await act("reboot"))["state"] == "running"
    stopped = await act("stop", force=True)
    assert stopped["state"] == "stopped" and stopped["pid"] is None and stopped["vnc"] is None
    refused = await api.post("/v1/vms/vm1/actions/pause")
    assert refused.status_code == 409
    assert "stopped" in refused.json()["error"]["message"]
    assert (await act("start"))["state"] == "running"


async def test_failed_start_leaves_nothing_behind(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    compute = services.agent.compute  # type: ignore[union-attr]
    compute.fail_start["broken"] = "qemu-system-x86_64: could not load kernel '/nope'"  # type: ignore[attr-defined]
    body = {"name": "broken", "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
    response = await api.post("/v1/vms", json=body)
    assert response.status_code == 202
    op = await wait_operation(api, response.json()["operation"]["id"])
    assert op["status"] == "failed"
    assert "could not load kernel" in op["error"]
    assert (await api.get("/v1/vms/broken")).status_code == 404
    storage = services.cloud.deps.image_store
    assert storage.disks == {}  # type: ignore[attr-defined]
    failed = (await api.get("/v1/events", params={"target": "vm/broken", "action": "vm.create"})).json()
    assert failed[-1]["outcome"] == "failed" and "could not load kernel" in failed[-1]["message"]


async def test_delete_removes_vm_disk_and_process(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    vm = await make_vm(api, "gone")
    response = await api.delete("/v1/vms/gone")
    assert response.status_code == 202
    op = await wait_operation(api, response.json()["operation"]["id"])
    assert op["status"] == "succeeded", op
    assert (await api.get("/v1/vms/gone")).status_code == 404
    assert vm["id"] not in services.cloud.deps.image_store.disks  # type: ignore[attr-defined]
    runtime = await services.agent.compute.status(vm["id"])  # type: ignore[union-attr]
    assert runtime.state.value == "stopped"


async def test_image_in_use_cannot_be_deleted(api: httpx.AsyncClient) -> None:
    await make_image(api)
    await make_vm(api, "a1")
    await make_vm(api, "a2")
    response = await api.delete("/v1/images/tiny")
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert "a1" in message and "a2" in message


async def test_flavor_sizes_and_overrides(api: httpx.AsyncClient) -> None:
    await make_image(api)
    created = await api.post("/v1/flavors", json={"name": "small", "cpus": 2, "memory_mib": 256, "disk_gib": 2})
    assert created.status_code == 201, created.text
    vm = await make_vm(api, "f1", flavor="small", cpus=None, memory_mib=None, disk_gib=None)
    assert (vm["cpus"], vm["memory_mib"], vm["disk_gib"], vm["flavor_name"]) == (2, 256, 2, "small")
    vm2 = await make_vm(api, "f2", flavor="small", cpus=None, memory_mib=512, disk_gib=None)
    assert (vm2["cpus"], vm2["memory_mib"]) == (2, 512)


async def test_concurrent_creates_get_distinct_vnc_and_one_name(api: httpx.AsyncClient) -> None:
    import anyio

    await make_image(api)
    statuses: list[int] = []

    async def create(name: str) -> None:
        body = {"name": name, "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1}
        statuses.append((await api.post("/v1/vms", json=body)).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(create, f"c{i}")
        for _ in range(5):
            tg.start_soon(create, "same")
    assert statuses.count(202) == 11 and statuses.count(409) == 4
    await services_drain(api)
    vms = (await api.get("/v1/vms")).json()
    displays = [vm["vnc"] for vm in vms]
    assert len(vms) == 11 and len(set(displays)) == 11


async def services_drain(api: httpx.AsyncClient) -> None:
    import anyio

    with anyio.fail_after(10):
        while any(vm["state"] == "creating" for vm in (await api.get("/v1/vms")).json()):
            await anyio.sleep(0.01)
