"""A volume moves between two running TCG guests on local (qcow2) storage, hot-plugged over QMP.

Guest A finds the hot-plugged disk and writes a marker into it; the disk is unplugged (the
guest must release it), the marker is on the volume as exported by the storage driver, and
guest B, after a hot-plug of its own, reads the marker back. B's disk is then grown live.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.integration.compute.helpers import console_text, qmp, wait_until
from tests.integration.compute.test_boot_from_rbd import storage

from bramble.compute.driver import DiskAttachment, PowerState, VmSpec
from bramble.compute.qemu.driver import QemuDriver
from bramble.storage.driver import StorageDriver
from bramble.storage.local import LocalStorage
from bramble.storage.rbd import RbdStorageDriver

pytestmark = [pytest.mark.qemu, pytest.mark.anyio]
__all__ = ["storage"]  # the RBD storage fixture, imported so pytest finds it here

UP = "BRAMBLE-GUEST-UP"
MiB = 1024**2


async def test_volume_moves_between_running_guests(
    driver: QemuDriver, make_spec: Callable[..., VmSpec], tmp_path: Path
) -> None:
    await move_between_guests(driver, make_spec, LocalStorage(tmp_path / "store"), "vol")


async def test_rbd_volume_moves_between_running_guests(
    driver: QemuDriver, make_spec: Callable[..., VmSpec], storage: RbdStorageDriver
) -> None:
    """The same on a throwaway Ceph cluster: QEMU opens the raw volume through librbd."""
    await move_between_guests(driver, make_spec, storage, f"vol-{uuid.uuid4().hex[:8]}")


async def move_between_guests(
    driver: QemuDriver, make_spec: Callable[..., VmSpec], store: StorageDriver, volume_id: str
) -> None:
    volume = await store.create_volume(volume_id, 8 * MiB)
    word = f"MARK{uuid.uuid4().hex[:10]}"
    node = "vol-test"
    disk = DiskAttachment(volume.path, format=volume.format, node_name=node)
    a = make_spec(cmdline=f"quiet bramble.volume=write:{word}")
    b = make_spec(cmdline="quiet bramble.volume=read")
    try:
        await driver.start(a)
        await driver.start(b)
        await wait_until(lambda: UP in console_text(driver, a.vm_id), 300, f"{UP} on A's console")

        await driver.attach_disk(a.vm_id, disk)
        wrote = f"BRAMBLE-GUEST-VOLUME wrote {word}"
        await wait_until(lambda: wrote in console_text(driver, a.vm_id), 120, "A's write")
        await driver.detach_disk(a.vm_id, node, timeout=120)
        names = {n["node-name"] for n in await qmp(driver, a.vm_id, "query-named-block-nodes")}
        assert node not in names
        exported = b"".join([chunk async for chunk in store.export_disk(volume_id)])
        assert exported[: len(word) + 1] == f"{word}\n".encode()

        await wait_until(lambda: UP in console_text(driver, b.vm_id), 300, f"{UP} on B's console")
        await driver.attach_disk(b.vm_id, disk)
        await wait_until(lambda: f"BRAMBLE-GUEST-VOLUME read {word}" in console_text(driver, b.vm_id), 120, "B's read")

        await driver.grow_disk(b.vm_id, node, 16 * MiB)
        sizes = {
            n["node-name"]: n["image"]["virtual-size"] for n in await qmp(driver, b.vm_id, "query-named-block-nodes")
        }
        assert sizes[node] == 16 * MiB
        await driver.detach_disk(b.vm_id, node, timeout=120)
        assert (await store.disk_info(volume_id)).virtual_size_bytes == 16 * MiB
        assert (await driver.status(a.vm_id)).state == PowerState.RUNNING
    finally:
        await driver.stop(a.vm_id, force=True)
        await driver.stop(b.vm_id, force=True)
        await store.delete_disk(volume_id)
