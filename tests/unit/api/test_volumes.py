"""Volumes through the real API on the fake drivers: lifecycle, snapshots, export/import, bad input."""

from __future__ import annotations

import os

import httpx
import pytest

from bramble.compute.fake import FakeComputeDriver
from bramble.daemon import Services
from bramble.storage.fake import FakeStorage
from tests.unit.api.helpers import make_image, make_vm, wait_operation

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024


def fake_compute(services: Services) -> FakeComputeDriver:
    assert services.agent is not None
    compute = services.agent.compute
    assert isinstance(compute, FakeComputeDriver)
    return compute


def fake_store(services: Services) -> FakeStorage:
    store = services.cloud.volumes.store
    assert isinstance(store, FakeStorage)
    return store


async def create(api: httpx.AsyncClient, name: str, size: int = 4 * MIB) -> dict:
    response = await api.post("/v1/volumes", json={"name": name, "size_bytes": size})
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_list_show_resize_delete(api: httpx.AsyncClient) -> None:
    vol = await create(api, "data")
    assert (vol["state"], vol["size_bytes"], vol["vm"], vol["driver"]) == ("available", 4 * MIB, None, "fake")
    assert [v["name"] for v in (await api.get("/v1/volumes")).json()] == ["data"]
    assert (await api.get(f"/v1/volumes/{vol['id']}")).json()["name"] == "data"
    grown = await api.post("/v1/volumes/data/resize", json={"size_bytes": 8 * MIB})
    assert grown.status_code == 200 and grown.json()["size_bytes"] == 8 * MIB
    shrink = await api.post("/v1/volumes/data/resize", json={"size_bytes": 4 * MIB})
    assert shrink.status_code == 422 and "shrinking" in shrink.json()["error"]["message"]
    assert (await api.delete("/v1/volumes/data")).status_code == 204
    assert (await api.get("/v1/volumes/data")).status_code == 404
    events = (await api.get("/v1/events", params={"target": "volume/data"})).json()
    assert {"volume.create", "volume.resize", "volume.delete"} <= {e["action"] for e in events}


async def test_attach_moves_between_vms_and_blocks_delete(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_vm(api, "a", start=False)
    await make_vm(api, "b", start=False)
    await create(api, "data")
    attached = await api.post("/v1/volumes/data/attach", json={"vm": "a"})
    assert attached.status_code == 200, attached.text
    assert (attached.json()["vm"], attached.json()["state"]) == ("a", "attached")
    refused = await api.delete("/v1/volumes/data")
    assert refused.status_code == 409 and "'a'" in refused.json()["error"]["message"]
    again = await api.post("/v1/volumes/data/attach", json={"vm": "b"})
    assert again.status_code == 409 and "attached to VM 'a'" in again.json()["error"]["message"]
    snap = await api.post("/v1/volumes/data/snapshots", json={"name": "s1"})
    assert snap.status_code == 409
    assert (await api.post("/v1/volumes/data/detach")).json()["state"] == "available"
    assert (await api.post("/v1/volumes/data/detach")).status_code == 409
    moved = await api.post("/v1/volumes/data/attach", json={"vm": "b"})
    assert moved.status_code == 200 and moved.json()["vm"] == "b"
    assert (await api.post("/v1/volumes/data/detach")).status_code == 200
    assert (await api.delete("/v1/volumes/data")).status_code == 204
    assert fake_store(services).disks.keys().isdisjoint({"vol-" + attached.json()["id"]})


async def test_a_stopped_vm_gets_its_volumes_at_next_start(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    vm = await make_vm(api, "a", start=False)
    first = await create(api, "first")
    second = await create(api, "second")
    for name in ("first", "second"):
        assert (await api.post(f"/v1/volumes/{name}/attach", json={"vm": "a"})).status_code == 200
    started = await api.post("/v1/vms/a/actions/start")
    assert started.status_code == 202, started.text
    assert (await wait_operation(api, started.json()["operation"]["id"]))["status"] == "succeeded"
    spec = fake_compute(services).vms[vm["id"]].spec
    assert [d.path for d in spec.disks[1:]] == [f"fake://disks/vol-{first['id']}", f"fake://disks/vol-{second['id']}"]
    desired = await services.cloud.nodes.desired_vm("node-1", vm["id"])
    assert desired is not None and desired.spec.disks == spec.disks


async def test_deleting_the_vm_frees_its_volume(api: httpx.AsyncClient) -> None:
    await make_image(api)
    await make_vm(api, "a", start=False)
    await create(api, "data")
    assert (await api.post("/v1/volumes/data/attach", json={"vm": "a"})).status_code == 200
    deleted = await api.delete("/v1/vms/a")
    assert deleted.status_code == 202, deleted.text
    op = await wait_operation(api, deleted.json()["operation"]["id"])
    assert op["status"] == "succeeded", op
    vol = (await api.get("/v1/volumes/data")).json()
    assert (vol["state"], vol["vm"]) == ("available", None)
    assert (await api.delete("/v1/volumes/data")).status_code == 204


async def test_live_attach_resize_detach_on_a_running_vm(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    vm = await make_vm(api, "a")
    vol = await create(api, "data")
    compute = fake_compute(services)
    attached = await api.post("/v1/volumes/data/attach", json={"vm": "a"})
    assert attached.status_code == 200, attached.text
    device = attached.json()["device"]
    disks = compute.vms[vm["id"]].spec.disks
    assert [(d.path, d.node_name) for d in disks[1:]] == [(f"fake://disks/vol-{vol['id']}", device)]
    grown = await api.post("/v1/volumes/data/resize", json={"size_bytes": 8 * MIB})
    assert grown.status_code == 200 and grown.json()["size_bytes"] == 8 * MIB
    assert compute.grown == {(vm["id"], device): 8 * MIB}
    assert (await api.post("/v1/volumes/data/detach")).json()["state"] == "available"
    assert len(compute.vms[vm["id"]].spec.disks) == 1


async def test_a_failed_hot_plug_leaves_the_volume_detached(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_vm(api, "a")
    await create(api, "data")
    compute = fake_compute(services)

    async def refuse(vm_id: str, disk: object) -> None:
        from bramble.compute.driver import ComputeError

        raise ComputeError("device_add failed: no free PCI slot")

    compute.attach_disk = refuse  # type: ignore[method-assign]
    failed = await api.post("/v1/volumes/data/attach", json={"vm": "a"})
    assert failed.status_code == 500 and "no free PCI slot" in failed.json()["error"]["message"]
    vol = (await api.get("/v1/volumes/data")).json()
    assert (vol["state"], vol["vm"], vol["device"]) == ("available", None, None)


async def test_snapshot_rollback_export_import_round_trip(api: httpx.AsyncClient, services: Services) -> None:
    vol = await create(api, "data", MIB)
    store = fake_store(services)
    original = os.urandom(MIB)
    store.write(f"vol-{vol['id']}", 0, original)
    assert (await api.post("/v1/volumes/data/snapshots", json={"name": "s1"})).status_code == 201
    dup = await api.post("/v1/volumes/data/snapshots", json={"name": "s1"})
    assert dup.status_code == 409
    store.write(f"vol-{vol['id']}", 0, b"changed")
    assert [s["name"] for s in (await api.get("/v1/volumes/data/snapshots")).json()] == ["s1"]
    assert (await api.get("/v1/volumes/data/export", params={"snapshot": "s1"})).content == original
    assert (await api.get("/v1/volumes/data/export")).content[:7] == b"changed"
    assert (await api.post("/v1/volumes/data/snapshots/s1/rollback")).status_code == 204
    exported = await api.get("/v1/volumes/data/export")
    assert exported.content == original and exported.headers["content-length"] == str(MIB)
    imported = await api.put("/v1/volumes/copy/import", content=exported.content)
    assert imported.status_code == 201, imported.text
    assert imported.json()["size_bytes"] == MIB
    assert (await api.get("/v1/volumes/copy/export")).content == original
    assert (await api.delete("/v1/volumes/data/snapshots/s1")).status_code == 204
    assert (await api.delete("/v1/volumes/data/snapshots/s1")).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "Bad_Name", "size_bytes": MIB}, 422, "bad volume name"),
        ({"name": "v", "size_bytes": 1000}, 422, "whole number of MiB"),
        ({"name": "v", "size_bytes": -1}, 422, "size_bytes"),
        ({"name": "v", "size_bytes": MIB, "pool": "elsewhere"}, 422, "unknown pool"),
        ({"name": "v", "size_bytes": MIB, "colour": "red"}, 422, "unknown field"),
        ({"name": "v"}, 422, "size_bytes"),
    ],
)
async def test_bad_create_input(api: httpx.AsyncClient, body: dict, status: int, words: str) -> None:
    response = await api.post("/v1/volumes", json=body)
    assert response.status_code == status and words in response.json()["error"]["message"]
    assert (await api.get("/v1/volumes")).json() == []


async def test_bad_requests_leave_nothing_half_made(api: httpx.AsyncClient, services: Services) -> None:
    await create(api, "data")
    dup = await api.post("/v1/volumes", json={"name": "data", "size_bytes": MIB})
    assert dup.status_code == 409
    fake_store(services).fail_volume = "pool is full"
    failed = await api.post("/v1/volumes", json={"name": "other", "size_bytes": MIB})
    assert failed.status_code == 422 and "pool is full" in failed.json()["error"]["message"]
    assert [v["name"] for v in (await api.get("/v1/volumes")).json()] == ["data"]
    assert (await api.post("/v1/volumes/nope/attach", json={"vm": "x"})).status_code == 404
    assert (await api.post("/v1/volumes/data/attach", json={"vm": "x"})).status_code == 404
    assert (await api.post("/v1/volumes/data/snapshots", json={"name": "../x"})).status_code == 422
    assert (await api.post("/v1/volumes/data/snapshots/nope/rollback")).status_code == 404
    assert (await api.get("/v1/volumes/data/export", params={"snapshot": "nope"})).status_code == 404
    empty = await api.put("/v1/volumes/copy/import", content=b"")
    assert empty.status_code == 422
    odd = await api.put("/v1/volumes/copy/import", content=b"x" * 1000)
    assert odd.status_code == 422 and "512-byte" in odd.json()["error"]["message"]
    clash = await api.put("/v1/volumes/data/import", content=b"x" * 512)
    assert clash.status_code == 409
    assert [v["name"] for v in (await api.get("/v1/volumes")).json()] == ["data"]
    assert len(fake_store(services).disks) == 1
