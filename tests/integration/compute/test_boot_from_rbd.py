"""A VM (QEMU, TCG) booting with its disk on a throwaway Ceph cluster, opened through librbd.

The x86_64 test guest's disk is marked with a byte pattern, uploaded as qcow2 through the
RBD driver (converted to a raw RBD image), finalized, and cloned. QEMU opens the clone
with ``-blockdev driver=rbd``; the guest must list the disk and print the boot marker,
and QEMU's block layer must read the image's pattern through the clone and write only to
the clone.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.ceph_cluster import CephCluster
from tests.integration.compute.helpers import console_text, file_chunks, qmp, wait_until

from bramble.compute.driver import DiskAttachment, PowerState, VmSpec
from bramble.compute.qemu.driver import QemuDriver
from bramble.storage.driver import StorageError
from bramble.storage.rbd import RbdStorageDriver

pytestmark = [pytest.mark.qemu, pytest.mark.anyio]

MARKER = "BRAMBLE-GUEST-UP"
MiB = 1024**2


async def qemu_io(driver: QemuDriver, vm_id: str, command: str) -> None:
    """Run a qemu-io command on the VM's first disk inside the running QEMU (its own librbd).

    qemu-io prints to QEMU's stdout, not the monitor, so callers check its effect instead.
    """
    line = f'qemu-io -d disk0-dev/virtio-backend "{command}"'  # the virtio-blk device's own backend
    error = await qmp(driver, vm_id, "human-monitor-command", {"command-line": line})
    assert not error, error  # qemu-io's own output goes to QEMU's stdout; HMP errors come back here


async def backup(driver: QemuDriver, vm_id: str, target: Path, size: int) -> Path:
    """Copy disk0, as the running QEMU reads it, into a local raw file (a blockdev-backup job)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(target), str(size)], check=True)
    file_node = {"driver": "file", "filename": str(target)}
    await qmp(driver, vm_id, "blockdev-add", {"driver": "raw", "node-name": "copy", "file": file_node})
    await qmp(
        driver, vm_id, "blockdev-backup", {"job-id": "copy0", "device": "disk0", "target": "copy", "sync": "full"}
    )
    end = time.monotonic() + 120
    while any(job["id"] == "copy0" for job in await qmp(driver, vm_id, "query-jobs")):
        if time.monotonic() > end:
            raise AssertionError("the backup job did not finish")
        await asyncio.sleep(0.1)
    await qmp(driver, vm_id, "blockdev-del", {"node-name": "copy"})
    return target


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def admin_read(ceph: CephCluster, name: str, offset: int, length: int) -> bytes:
    import rados
    import rbd

    with (
        rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster,
        cluster.open_ioctx(ceph.pool) as ioctx,
        rbd.Image(ioctx, name, read_only=True) as image,
    ):
        return bytes(image.read(offset, length))


@pytest.fixture
async def storage(ceph: CephCluster, tmp_path: Path) -> AsyncIterator[RbdStorageDriver]:
    rbd_storage = RbdStorageDriver(
        conf=ceph.conf,
        pool=ceph.pool,
        user=ceph.user,
        keyring=ceph.user_keyring,
        work_dir=tmp_path / "rbd",
        op_timeout=3,
        connect_timeout=3,
    )
    try:
        yield rbd_storage
    finally:
        await rbd_storage.close()


async def test_vm_boots_from_an_rbd_clone(
    ceph: CephCluster,
    storage: RbdStorageDriver,
    driver: QemuDriver,
    guests: dict[str, Path],
    tmp_path: Path,
) -> None:
    guest = guests["x86_64"]
    disk_qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["cp", str(guest / "disk.qcow2"), str(disk_qcow2)], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 64k", "-c", "write -P 0x43 32M 64k", str(disk_qcow2)],
        check=True,
        capture_output=True,
    )
    token = uuid.uuid4().hex[:8]
    image_id, vm_id = f"guest-{token}", str(uuid.uuid4())
    disk_id = f"vm-{token}"
    made: dict[str, Any] = {}
    try:
        await storage.write_image(image_id, file_chunks(disk_qcow2))
        image = await storage.finalize_image(image_id)
        made["image"] = image
        assert (image.format, image.virtual_size_bytes) == ("raw", 64 * MiB)
        disk = await storage.clone_disk(disk_id, image, 128 * MiB)
        made["disk"] = disk
        assert disk.path.startswith("rbd:")

        spec = VmSpec(
            vm_id=vm_id,
            name="rbd-guest",
            arch="x86_64",
            cpus=1,
            memory_mib=256,
            disks=(DiskAttachment(disk.path, format="raw"),),
            kernel=str(guest / "kernel"),
            initrd=str(guest / "initrd.gz"),
            cmdline="quiet",
        )
        started = await driver.start(spec)
        assert started.state == PowerState.RUNNING
        begun = time.monotonic()
        await wait_until(lambda: MARKER in console_text(driver, vm_id), 180, f"{MARKER} on the console")
        print(f"x86_64 from RBD: {MARKER} after {time.monotonic() - begun:.1f}s")  # shown with pytest -s
        assert "BRAMBLE-GUEST-DISKS vda" in console_text(driver, vm_id)

        # QEMU's librbd reads the image's data through the clone: copy the disk as QEMU
        # sees it into a local file with a backup job, and look at it
        copy = await backup(driver, vm_id, tmp_path / "copy.raw", 128 * MiB)
        assert read_at(copy, 0, 64 * 1024) == b"\x42" * 64 * 1024
        assert read_at(copy, 32 * MiB, 64 * 1024) == b"\x43" * 64 * 1024
        assert read_at(copy, 100 * MiB, 64 * 1024) == bytes(64 * 1024)
        # ... and its writes land in the clone only
        await qemu_io(driver, vm_id, "write -P 0x77 100M 64k")
        await qemu_io(driver, vm_id, "flush")
        assert admin_read(ceph, f"disk-{disk_id}", 100 * MiB, 64 * 1024) == b"\x77" * 64 * 1024
        assert admin_read(ceph, f"img-{image_id}", 0, 4) == b"\x42" * 4

        # the storage driver will not pull the disk from under a running VM
        with pytest.raises(StorageError, match="in use"):
            await storage.delete_disk(disk_id)
        await storage.snapshot_create(disk_id, "live")
        with pytest.raises(StorageError, match="in use"):
            await storage.snapshot_rollback(disk_id, "live")

        # Ceph stops answering: storage operations fail fast, the VM keeps running
        with ceph.frozen("osd.0"):
            with pytest.raises(StorageError, match="did not answer within 3 s"):
                await storage.snapshot_list(disk_id)
            assert (await driver.status(vm_id)).state == PowerState.RUNNING
        await qemu_io(driver, vm_id, "write -P 0x78 101M 64k")  # I/O still works after the stall
        await qemu_io(driver, vm_id, "flush")
        assert admin_read(ceph, f"disk-{disk_id}", 101 * MiB, 64 * 1024) == b"\x78" * 64 * 1024
        assert (await driver.status(vm_id)).state == PowerState.RUNNING

        stopped = await driver.stop(vm_id, force=True)
        assert stopped.state == PowerState.STOPPED
    finally:
        await driver.stop(vm_id, force=True)
        if "disk" in made:
            await storage.delete_disk(disk_id)
        if "image" in made or await storage.image_exists(image_id):
            await storage.delete_image(image_id)
    assert not await storage.disk_exists(disk_id)
    assert not await storage.image_exists(image_id)
