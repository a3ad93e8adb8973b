"""VM disk snapshots and image delete --flatten on a real (throwaway) Ceph cluster, through the API
and the real RBD driver: snapshot a running VM's disk, write, roll back (stopped), the bytes are back;
`image delete --flatten` with a dependent disk leaves the disk readable and standalone, the image gone.
The same on the local driver (qcow2 overlays, QEMU's tools): refused while the VM runs, fine stopped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.ceph_cluster import CephCluster
from tests.integration.storage.test_pools_rbd import ceph_pool, rbd_body, rbd_images, services
from tests.unit.api.helpers import wait_operation

from bramble.daemon import Services

__all__ = ["ceph_pool", "services"]  # fixtures, imported so pytest finds them here
pytestmark = pytest.mark.anyio
MIB = 1024 * 1024


def read_disk(pool: dict[str, Any], name: str, length: int) -> bytes:
    import rbd

    with pool["admin"].open_ioctx(pool["name"]) as ioctx, rbd.Image(ioctx, name, read_only=True) as image:
        return bytes(image.read(0, length))


def write_disk(pool: dict[str, Any], name: str, payload: bytes) -> None:
    """What the guest would do (the fake compute driver runs no guest)."""
    import rbd

    with pool["admin"].open_ioctx(pool["name"]) as ioctx, rbd.Image(ioctx, name) as image:
        image.write(payload, 0)


async def run(api: httpx.AsyncClient, response: httpx.Response) -> None:
    assert response.status_code == 202, response.text
    op = await wait_operation(api, response.json()["operation"]["id"], deadline=60)
    assert op["status"] == "succeeded", op


async def test_vm_disk_snapshot_rollback_and_image_delete_flatten(
    api: httpx.AsyncClient, services: Services, ceph: CephCluster, ceph_pool: dict[str, Any]
) -> None:
    assert (await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool))).status_code == 201
    payload = os.urandom(4 * MIB)
    made = await api.post("/v1/images", json={"name": "plain", "arch": "x86_64", "pool": "ceph"})
    image_id = made.json()["id"]
    assert (await api.put(f"/v1/images/{image_id}/data/disk", content=payload)).status_code == 200
    assert (await api.post(f"/v1/images/{image_id}/activate")).status_code == 200
    body = {"name": "a", "image": "plain", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
    await run(api, await api.post("/v1/vms", json=body))
    vm = (await api.get("/v1/vms/a")).json()
    assert vm["state"] == "running"
    disk = f"disk-{vm['id']}"

    # running: RBD snapshots it (crash-consistent); the guest then writes
    created = await api.post("/v1/vms/a/snapshots", json={"name": "s1"})
    assert created.status_code == 201, created.text
    write_disk(ceph_pool, disk, b"written after s1")
    assert read_disk(ceph_pool, disk, 16) == b"written after s1"
    refused = await api.post("/v1/vms/a/snapshots/s1/rollback")
    assert refused.status_code == 409 and "stop the VM first" in refused.json()["error"]["message"]
    await run(api, await api.post("/v1/vms/a/actions/stop", json={"force": True}))
    assert (await api.post("/v1/vms/a/snapshots/s1/rollback")).status_code == 204
    assert read_disk(ceph_pool, disk, 4 * MIB) == payload

    # the image cannot go while the disk is its clone, unless flattened first (the snapshot stays)
    in_use = await api.delete("/v1/images/plain")
    assert in_use.status_code == 409 and ": a" in in_use.json()["error"]["message"]
    gone = await api.delete("/v1/images/plain", params={"flatten": "true"})
    assert gone.status_code == 204, gone.text
    assert f"img-{image_id}" not in rbd_images(ceph_pool)
    assert read_disk(ceph_pool, disk, 4 * MIB) == payload
    assert [s["name"] for s in (await api.get("/v1/vms/a/snapshots")).json()] == ["s1"]
    assert (await api.get("/v1/vms/a")).json()["image_id"] is None
    assert (await api.post("/v1/vms/a/flatten")).status_code == 200  # no parent left: nothing to do
    # the snapshot got its own copy too (librbd flattens snapshots with the head): still whole
    write_disk(ceph_pool, disk, b"written after flatten")
    assert (await api.post("/v1/vms/a/snapshots/s1/rollback")).status_code == 204
    assert read_disk(ceph_pool, disk, 4 * MIB) == payload

    # the standalone disk still snapshots, and the VM goes with it
    assert (await api.delete("/v1/vms/a/snapshots/s1")).status_code == 204
    await run(api, await api.delete("/v1/vms/a"))
    assert not [n for n in rbd_images(ceph_pool) if n.startswith(("img-", "disk-"))]
    assert (await api.delete("/v1/pools/ceph")).status_code == 204


def qemu_info(path: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def guest_bytes(path: str, length: int, scratch: Path) -> bytes:
    """The first ``length`` bytes the guest sees (through the backing chain, if any)."""
    raw = scratch / "guest.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", path, str(raw)], check=True)
    try:
        with open(raw, "rb") as f:
            return f.read(length)
    finally:
        raw.unlink()


async def test_local_vm_disk_snapshot_flatten_and_image_delete_flatten(
    api: httpx.AsyncClient, services: Services, tmp_path: Path
) -> None:
    payload = os.urandom(64 * 1024)
    made = await api.post("/v1/images", json={"name": "plain", "arch": "x86_64"})
    image_id = made.json()["id"]
    assert (await api.put(f"/v1/images/{image_id}/data/disk", content=payload)).status_code == 200
    assert (await api.post(f"/v1/images/{image_id}/activate")).status_code == 200
    body = {"name": "a", "image": "plain", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
    await run(api, await api.post("/v1/vms", json=body))
    vm = (await api.get("/v1/vms/a")).json()
    path = str(services.settings.state_dir / "disks" / f"{vm['id']}.qcow2")
    assert "backing-filename" in qemu_info(path)  # an overlay on the image

    running = await api.post("/v1/vms/a/snapshots", json={"name": "s1"})
    assert running.status_code == 409 and "stop the VM first" in running.json()["error"]["message"]
    assert (await api.post("/v1/vms/a/flatten")).status_code == 409
    await run(api, await api.post("/v1/vms/a/actions/stop", json={"force": True}))
    assert (await api.post("/v1/vms/a/snapshots", json={"name": "s1"})).status_code == 201
    assert [s["name"] for s in (await api.get("/v1/vms/a/snapshots")).json()] == ["s1"]
    assert [s["name"] for s in qemu_info(path)["snapshots"]] == ["s1"]

    # qemu-img rebase copies the image's data into the active layer only: the overlay's internal
    # snapshot would read zeros afterwards, so flatten is refused while it has one, and nothing goes
    kept = await api.delete("/v1/images/plain", params={"flatten": "true"})
    assert kept.status_code == 422, kept.text
    assert "VM 'a'" in kept.json()["error"]["message"] and "snapshots (s1)" in kept.json()["error"]["message"]
    assert (services.settings.state_dir / "images" / image_id / "disk").exists()
    assert "backing-filename" in qemu_info(path)
    assert (await api.delete("/v1/vms/a/snapshots/s1")).status_code == 204

    gone = await api.delete("/v1/images/plain", params={"flatten": "true"})
    assert gone.status_code == 204, gone.text
    assert not (services.settings.state_dir / "images" / image_id).exists()
    assert "backing-filename" not in qemu_info(path)
    assert guest_bytes(path, len(payload), tmp_path) == payload
    # standalone now: a snapshot keeps the data, a rollback brings it back
    assert (await api.post("/v1/vms/a/snapshots", json={"name": "s2"})).status_code == 201
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 64k", path], check=True, capture_output=True)
    assert guest_bytes(path, len(payload), tmp_path) == b"\x55" * len(payload)
    assert (await api.post("/v1/vms/a/snapshots/s2/rollback")).status_code == 204
    assert guest_bytes(path, len(payload), tmp_path) == payload
    assert (await api.post("/v1/vms/a/flatten")).status_code == 200  # nothing left to flatten: no-op
    await run(api, await api.delete("/v1/vms/a"))
