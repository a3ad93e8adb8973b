"""VM disk snapshots, VM flatten and image delete --flatten through the real API on the fake drivers."""

from __future__ import annotations

import httpx
import pytest

from bramble.daemon import Services
from bramble.storage.fake import FakeStorage
from tests.unit.api.helpers import make_image, make_vm, wait_operation

pytestmark = pytest.mark.anyio


def fake_store(services: Services) -> FakeStorage:
    store = services.cloud.volumes.store
    assert isinstance(store, FakeStorage)
    return store


def message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])


async def stop(api: httpx.AsyncClient, vm: str) -> None:
    accepted = await api.post(f"/v1/vms/{vm}/actions/stop", json={"force": True})
    assert accepted.status_code == 202, accepted.text
    assert (await wait_operation(api, accepted.json()["operation"]["id"]))["status"] == "succeeded"


async def test_snapshot_a_running_vm_then_roll_back_stopped(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api, kernel=False)
    vm = await make_vm(api, "a")
    assert vm["state"] == "running"
    store = fake_store(services)
    store.write(vm["id"], 0, b"before")
    created = await api.post("/v1/vms/a/snapshots", json={"name": "s1"})
    assert created.status_code == 201, created.text
    assert created.json()["size_bytes"] == 1024**3
    dup = await api.post("/v1/vms/a/snapshots", json={"name": "s1"})
    assert dup.status_code == 409 and "already has a snapshot 's1'" in message(dup)
    assert [s["name"] for s in (await api.get("/v1/vms/a/snapshots")).json()] == ["s1"]
    store.write(vm["id"], 0, b"after!")

    running = await api.post("/v1/vms/a/snapshots/s1/rollback")
    assert running.status_code == 409 and "stop the VM first" in message(running)
    await stop(api, "a")
    assert (await api.post("/v1/vms/a/snapshots/s1/rollback")).status_code == 204
    assert store.data[vm["id"]][:6] == b"before"

    assert (await api.delete("/v1/vms/a/snapshots/s1")).status_code == 204
    assert (await api.get("/v1/vms/a/snapshots")).json() == []
    events = (await api.get("/v1/events", params={"target": "vm/a"})).json()
    actions = {e["action"] for e in events}
    assert {"vm.snapshot.create", "vm.snapshot.rollback", "vm.snapshot.delete"} <= actions


async def test_snapshot_bad_input(api: httpx.AsyncClient) -> None:
    await make_image(api, kernel=False)
    await make_vm(api, "a", start=False)
    assert (await api.post("/v1/vms/nope/snapshots", json={"name": "s1"})).status_code == 404
    assert (await api.get("/v1/vms/nope/snapshots")).status_code == 404
    bad = await api.post("/v1/vms/a/snapshots", json={"name": "../x"})
    assert bad.status_code == 422 and "bad snapshot name" in message(bad)
    assert (await api.post("/v1/vms/a/snapshots", json={"name": ""})).status_code == 422
    assert (await api.post("/v1/vms/a/snapshots", json={"name": "s", "extra": 1})).status_code == 422
    missing = await api.post("/v1/vms/a/snapshots/nope/rollback")
    assert missing.status_code == 404 and "no snapshot 'nope'" in message(missing)
    assert (await api.delete("/v1/vms/a/snapshots/nope")).status_code == 404
    assert (await api.post("/v1/vms/nope/flatten")).status_code == 404
    rejected = (await api.get("/v1/events", params={"target": "vm/a"})).json()
    assert any(e["action"] == "vm.snapshot.create" and e["outcome"] == "rejected" for e in rejected)


async def test_a_disk_locked_while_open_needs_the_vm_stopped(api: httpx.AsyncClient, services: Services) -> None:
    """As a local qcow2 pool: QEMU holds the file, so snapshot, delete and flatten wait for a stop."""
    await make_image(api, kernel=False)
    vm = await make_vm(api, "a")
    store = fake_store(services)
    store.changes_while_open = False
    for response in (
        await api.post("/v1/vms/a/snapshots", json={"name": "s1"}),
        await api.post("/v1/vms/a/flatten"),
    ):
        assert response.status_code == 409 and "stop the VM first" in message(response)
    assert store.snapshots.get(vm["id"]) is None and store.flattened == []
    await stop(api, "a")
    assert (await api.post("/v1/vms/a/snapshots", json={"name": "s1"})).status_code == 201
    flat = await api.post("/v1/vms/a/flatten")
    assert flat.status_code == 200 and flat.json()["name"] == "a"
    assert store.flattened == [vm["id"]]


async def test_flatten_a_running_vm(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api, kernel=False)
    vm = await make_vm(api, "a")
    flat = await api.post("/v1/vms/a/flatten")
    assert flat.status_code == 200 and flat.json()["state"] == "running"
    assert fake_store(services).flattened == [vm["id"]]
    assert "vm.flatten" in {e["action"] for e in (await api.get("/v1/events", params={"target": "vm/a"})).json()}


async def test_a_cache_tier_overlay_is_refused(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api, kernel=False)
    vm = await make_vm(api, "a", start=False)
    await services.cloud.vms._update(vm["id"], cache="on")
    for response in (
        await api.post("/v1/vms/a/snapshots", json={"name": "s1"}),
        await api.get("/v1/vms/a/snapshots"),
        await api.post("/v1/vms/a/flatten"),
    ):
        assert response.status_code == 409, response.text
        assert "cache tier" in message(response) and "vm cache drop a" in message(response)


async def test_image_delete_flatten(api: httpx.AsyncClient, services: Services) -> None:
    image = await make_image(api, "plain", kernel=False)
    a = await make_vm(api, "a", image="plain")
    b = await make_vm(api, "b", image="plain", start=False)
    store = fake_store(services)

    refused = await api.delete("/v1/images/plain")
    assert refused.status_code == 409 and "a, b" in message(refused) and "--flatten" in message(refused)

    store.fail_flatten[b["id"]] = "the cluster said no"
    failed = await api.delete("/v1/images/plain", params={"flatten": "true"})
    assert failed.status_code == 422, failed.text
    assert "VM 'b'" in message(failed) and "the cluster said no" in message(failed)
    assert (await api.get("/v1/images/plain")).status_code == 200 and image["id"] in store.images

    del store.fail_flatten[b["id"]]
    assert (await api.delete("/v1/images/plain", params={"flatten": "true"})).status_code == 204
    assert (await api.get("/v1/images/plain")).status_code == 404 and image["id"] not in store.images
    assert set(store.flattened) == {a["id"], b["id"]}
    for vm in ("a", "b"):
        shown = await api.get(f"/v1/vms/{vm}")
        assert shown.status_code == 200 and shown.json()["image_id"] is None
    # b had no image to boot from: it still starts, from its own disk
    started = await api.post("/v1/vms/b/actions/start")
    assert (await wait_operation(api, started.json()["operation"]["id"]))["status"] == "succeeded"


async def test_image_delete_flatten_refusals(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api, "kernelled", kernel=True)
    await make_vm(api, "k", image="kernelled", start=False)
    kernel = await api.delete("/v1/images/kernelled", params={"flatten": "true"})
    assert kernel.status_code == 409 and "kernel" in message(kernel) and "k" in message(kernel)

    await make_image(api, "plain", kernel=False)
    await make_vm(api, "run", image="plain")
    fake_store(services).changes_while_open = False
    running = await api.delete("/v1/images/plain", params={"flatten": "true"})
    assert running.status_code == 409 and "VM 'run' is running" in message(running)
    assert fake_store(services).flattened == []
    assert (await api.get("/v1/images/plain")).status_code == 200
