"""The node-local cache tier in front of RBD, with real QEMU (TCG) guests and a throwaway Ceph cluster.

The x86_64 test guest's disk is marked with byte patterns and uploaded through the RBD driver.
VMs get cache overlays (local qcow2 -> NBD export of the image's qemu-storage-daemon ->
copy-on-read -> qcow2 cache file -> RBD snapshot). Bytes read from Ceph are librbd's own
``rd_bytes`` counter inside the cache owner (its admin socket).

A "boot read" is the guest booting to its marker plus a 48 MiB read of the disk through the
guest's own virtio-blk backend (qemu-io inside the running QEMU): the test guest runs from an
initramfs and itself reads only its partition table, where a real guest reads its root file
system.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.ceph_cluster import CephCluster
from tests.integration.compute.helpers import console_text, file_chunks, qmp, wait_until

from bramble.agent.cache import NodeCache
from bramble.compute.driver import ComputeError, DiskAttachment, PowerState, VmSpec
from bramble.compute.qemu.driver import QemuDriver
from bramble.storage.cache import CacheError, ImageCache
from bramble.storage.driver import StoredImage
from bramble.storage.rbd import RbdStorageDriver

pytestmark = [pytest.mark.qemu, pytest.mark.anyio]

MARKER = "BRAMBLE-GUEST-UP"
MiB = 1024**2
BOOT_READ = "read 0 48M"


async def qemu_io(driver: QemuDriver, vm_id: str, command: str) -> None:
    """A qemu-io command on the VM's root disk, through its virtio-blk backend (what the guest uses)."""
    error = await qmp(
        driver, vm_id, "human-monitor-command", {"command-line": f'qemu-io -d disk0-dev/virtio-backend "{command}"'}
    )
    assert not error, error


def admin_read(ceph: CephCluster, name: str, offset: int, length: int, snapshot: str | None = None) -> bytes:
    import rados
    import rbd

    with (
        rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster,
        cluster.open_ioctx(ceph.pool) as ioctx,
        rbd.Image(ioctx, name, snapshot=snapshot, read_only=True) as image,
    ):
        return bytes(image.read(offset, length))


def rbd_names(ceph: CephCluster) -> set[str]:
    import rados
    import rbd

    with rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster, cluster.open_ioctx(ceph.pool) as ioctx:
        return set(rbd.RBD().list(ioctx))


def storage_daemons(text: str) -> set[int]:
    """Live qemu-storage-daemon processes whose command line contains ``text``."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"qemu-storage-daemon") and any(text.encode() in a for a in argv):
                found.add(int(proc.name))
    return found


@pytest.fixture
async def storage(ceph: CephCluster, tmp_path: Path) -> AsyncIterator[RbdStorageDriver]:
    rbd_storage = RbdStorageDriver(
        conf=ceph.conf, pool=ceph.pool, user=ceph.user, keyring=ceph.user_keyring, work_dir=tmp_path / "rbd"
    )
    try:
        yield rbd_storage
    finally:
        await rbd_storage.close()


@pytest.fixture
async def cache(storage: RbdStorageDriver) -> AsyncIterator[ImageCache]:
    """A cache tier in a short private directory; every owner it started is stopped by PID."""
    directory = Path(tempfile.mkdtemp(prefix="brc-", dir="/tmp"))
    tier = ImageCache(directory)
    try:
        yield tier
    finally:
        await tier.close()
        for image_id in tier.running():
            await tier.stop_owner(image_id)
        leftovers = storage_daemons(str(directory))
        shutil.rmtree(directory, ignore_errors=True)
        assert not leftovers, f"cache owners still running: {leftovers}"


@pytest.fixture
async def image(
    storage: RbdStorageDriver, cache: ImageCache, guests: dict[str, Path], tmp_path: Path
) -> AsyncIterator[StoredImage]:
    """The test guest's 64 MiB disk, 0x42 over its first 48 MiB and 0x43 at 56 MiB, as an RBD image."""
    disk = tmp_path / "disk.qcow2"
    shutil.copyfile(guests["x86_64"] / "disk.qcow2", disk)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 48M", "-c", "write -P 0x43 56M 64k", str(disk)],
        check=True,
        capture_output=True,
    )
    image_id = f"cached-{uuid.uuid4().hex[:8]}"
    await storage.write_image(image_id, file_chunks(disk))
    stored = await storage.finalize_image(image_id)
    try:
        yield stored
    finally:
        await cache.drop_image(image_id)  # its owner holds the image open
        await storage.delete_image(image_id, flatten=True)


def spec_for(guests: dict[str, Path], vm_id: str, disk: str) -> VmSpec:
    guest = guests["x86_64"]
    return VmSpec(
        vm_id=vm_id,
        name="cached-guest",
        arch="x86_64",
        cpus=1,
        memory_mib=128,
        disks=(DiskAttachment(disk, format="qcow2"),),
        kernel=str(guest / "kernel"),
        initrd=str(guest / "initrd.gz"),
        cmdline="quiet",
    )


async def boot(driver: QemuDriver, guests: dict[str, Path], vm_id: str, disk: str) -> None:
    started = await driver.start(spec_for(guests, vm_id, disk))
    assert started.state == PowerState.RUNNING
    await wait_until(lambda: MARKER in console_text(driver, vm_id), 240, f"{MARKER} on the console of {vm_id}")
    assert "BRAMBLE-GUEST-DISKS vda" in console_text(driver, vm_id)


async def test_second_boot_reads_far_less_from_ceph(
    storage: RbdStorageDriver, cache: ImageCache, image: StoredImage, driver: QemuDriver, guests: dict[str, Path]
) -> None:
    first_vm, second_vm = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        first_disk = await cache.create_overlay(f"d-{first_vm[:8]}", image, 128 * MiB, storage)
        assert cache.overlay_image(first_disk.path) == image.image_id
        assert (await cache.stats(image.image_id)).ceph_read_bytes == 0  # nothing read yet
        await boot(driver, guests, first_vm, first_disk.path)
        await qemu_io(driver, first_vm, BOOT_READ)
        first = (await cache.stats(image.image_id)).ceph_read_bytes
        await driver.stop(first_vm, force=True)

        second_disk = await cache.create_overlay(f"d-{second_vm[:8]}", image, 128 * MiB, storage)
        await boot(driver, guests, second_vm, second_disk.path)
        await qemu_io(driver, second_vm, BOOT_READ)
        stats = await cache.stats(image.image_id)
        second = stats.ceph_read_bytes - first
        print(f"bytes read from Ceph: first boot {first}, second boot {second}; cache file {stats.cache_bytes}")
        assert first >= 48 * MiB  # the first boot's data came from Ceph ...
        assert second < first / 2  # ... the second one's mostly from the node's cache
        assert stats.cache_bytes >= 48 * MiB
        # the guest sees the image's data through two layers of cache
        await qemu_io(driver, second_vm, "read -P 0x42 0 1M")
        await qemu_io(driver, second_vm, "read -P 0x43 56M 64k")
    finally:
        for vm_id in (first_vm, second_vm):
            await driver.stop(vm_id, force=True)
            await cache.delete_overlay(f"d-{vm_id[:8]}")


async def test_ephemeral_writes_stay_local_and_drop_pivots_a_running_guest_onto_rbd(
    ceph: CephCluster,
    storage: RbdStorageDriver,
    cache: ImageCache,
    image: StoredImage,
    driver: QemuDriver,
    guests: dict[str, Path],
) -> None:
    vm_id = str(uuid.uuid4())
    disk_id = f"d-{vm_id[:8]}"
    try:
        overlay = await cache.create_overlay(disk_id, image, 128 * MiB, storage)
        await boot(driver, guests, vm_id, overlay.path)
        before = cache.overlay_bytes(disk_id)
        await qemu_io(driver, vm_id, "write -P 0x77 100M 1M")
        await qemu_io(driver, vm_id, "write -P 0x78 0 64k")
        await qemu_io(driver, vm_id, "flush")
        # the writes are in the node's overlay; nothing per VM exists in Ceph, the image is untouched
        assert cache.overlay_bytes(disk_id) >= before + MiB
        assert f"disk-{disk_id}" not in rbd_names(ceph)
        assert admin_read(ceph, f"img-{image.image_id}", 0, 4, snapshot="base") == b"\x42" * 4

        # drop: clone the image in Ceph, mirror the overlay's own data onto it, pivot, close the overlay
        clone = await storage.clone_disk(disk_id, image, cache.overlay_size(disk_id))
        assert clone.virtual_size_bytes == 128 * MiB
        await driver.replace_disk(vm_id, "disk0", DiskAttachment(clone.path, format="raw", node_name="root-rbd"))
        nodes = await qmp(driver, vm_id, "query-named-block-nodes")
        assert not [n for n in nodes if n["drv"] in ("nbd", "qcow2")], "the VM still holds its overlay or the cache"
        await cache.delete_overlay(disk_id)
        assert not Path(overlay.path).exists()
        assert admin_read(ceph, f"disk-{disk_id}", 100 * MiB, MiB) == b"\x77" * MiB
        assert admin_read(ceph, f"disk-{disk_id}", 0, 64 * 1024) == b"\x78" * 64 * 1024
        assert admin_read(ceph, f"disk-{disk_id}", 64 * 1024, 4) == b"\x42" * 4  # from the image, via the clone

        # the guest goes on, now on RBD: new writes land in Ceph, and it reboots to its marker again
        assert (await driver.status(vm_id)).state == PowerState.RUNNING
        await qemu_io(driver, vm_id, "write -P 0x79 101M 64k")
        await qemu_io(driver, vm_id, "flush")
        assert admin_read(ceph, f"disk-{disk_id}", 101 * MiB, 64 * 1024) == b"\x79" * 64 * 1024
        await driver.reboot(vm_id)
        await wait_until(lambda: console_text(driver, vm_id).count(MARKER) >= 2, 240, "the marker after a reboot")
        assert (await driver.status(vm_id)).state == PowerState.RUNNING
    finally:
        await driver.stop(vm_id, force=True)
        await cache.delete_overlay(disk_id)
        await storage.delete_disk(disk_id)


async def test_delete_removes_the_overlay_and_its_writes(
    storage: RbdStorageDriver, cache: ImageCache, image: StoredImage, driver: QemuDriver, guests: dict[str, Path]
) -> None:
    vm_id = str(uuid.uuid4())
    disk_id = f"d-{vm_id[:8]}"
    try:
        overlay = await cache.create_overlay(disk_id, image, 64 * MiB, storage)
        await boot(driver, guests, vm_id, overlay.path)
        await qemu_io(driver, vm_id, "write -P 0x55 8M 1M")
        await qemu_io(driver, vm_id, "flush")
        await driver.stop(vm_id, force=True)
        await cache.delete_overlay(disk_id)
        assert not Path(overlay.path).exists()
        assert not Path(overlay.path).with_suffix(".json").exists()
        # a new VM of the same image sees the image, not the deleted VM's write
        again = await cache.create_overlay(disk_id, image, 64 * MiB, storage)
        check = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x42 8M 1M", again.path], capture_output=True, text=True
        )
        assert "Pattern verification failed" not in check.stdout + check.stderr, check.stdout
        assert check.returncode == 0, check.stderr
    finally:
        await driver.stop(vm_id, force=True)
        await cache.delete_overlay(disk_id)


async def test_precache_fills_the_cache_and_is_cancelled_cleanly(
    storage: RbdStorageDriver, cache: ImageCache, image: StoredImage
) -> None:
    url = await cache.ensure_owner(image, storage)
    assert await cache.ensure_owner(image, storage) == url  # one owner per image
    pid = cache.owner_pid(image.image_id)
    assert pid is not None and storage_daemons(str(cache.image_dir(image.image_id))) == {pid}

    cache.precache("vm-a", image.image_id, 32 * MiB)
    task = cache.precache_task("vm-a")
    assert task is not None
    assert await asyncio.wait_for(task, 120) == 32 * MiB
    stats = await cache.stats(image.image_id)
    assert stats.ceph_read_bytes >= 32 * MiB
    assert stats.cache_bytes >= 32 * MiB
    # reading the pre-cached range again costs Ceph nothing
    reread = subprocess.run(
        ["qemu-img", "bench", "-f", "raw", "-c", "8", "-s", "4M", "-S", "4M", url], capture_output=True, text=True
    )
    assert reread.returncode == 0, reread.stderr
    assert (await cache.stats(image.image_id)).ceph_read_bytes == stats.ceph_read_bytes

    # cancelled (as at a VM stop): the reader process is gone, the owner still serves
    cache.precache("vm-b", image.image_id, 64 * MiB)
    task = cache.precache_task("vm-b")
    assert task is not None
    await asyncio.sleep(0)
    cache.cancel_precache("vm-b")
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert cache.owner_pid(image.image_id) == pid

    # stopped by PID; the cache file stays, so the next owner starts warm
    assert await cache.stop_owner(image.image_id)
    assert cache.owner_pid(image.image_id) is None and not storage_daemons(str(cache.image_dir(image.image_id)))
    assert (await cache.stats(image.image_id)).cache_bytes >= 32 * MiB
    await cache.ensure_owner_for(image.image_id)
    assert (await cache.stats(image.image_id)).ceph_read_bytes == 0
    with pytest.raises(CacheError, match="no cache on this node"):
        await cache.ensure_owner_for("never-cached")


async def test_concurrent_readers_fetch_each_region_once(
    storage: RbdStorageDriver, cache: ImageCache, image: StoredImage
) -> None:
    """Four readers of the whole image at once through the export: Ceph serves each byte once."""
    url = await cache.ensure_owner(image, storage)
    readers = [
        await asyncio.create_subprocess_exec(
            "qemu-img",
            "bench",
            "-f",
            "raw",
            "-c",
            "64",
            "-d",
            "4",
            "-s",
            "1M",
            "-S",
            "1M",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = [await reader.communicate() for reader in readers]
    assert all(reader.returncode == 0 for reader in readers), results
    stats = await cache.stats(image.image_id)
    assert stats.ceph_read_bytes <= image.virtual_size_bytes + 4 * MiB, json.dumps(stats.__dict__)
    check = subprocess.run(
        ["qemu-io", "-f", "raw", "-r", "-c", "read -P 0x42 0 48M", "-c", "read -P 0x43 56M 64k", url],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "verification failed" not in check.stdout, check.stdout


async def test_node_cache_hit_ratio_release_and_offline_drop(
    ceph: CephCluster,
    storage: RbdStorageDriver,
    cache: ImageCache,
    image: StoredImage,
    driver: QemuDriver,
    guests: dict[str, Path],
) -> None:
    """The agent's side: pre-cache at start, the hit ratio `vm show` reports, owners released by
    PID when no running VM needs them, and a drop of a stopped VM (commit into an RBD clone)."""
    node = NodeCache(cache, driver)
    vm_id, other_vm, rbd_vm = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    disk_id, other_disk = f"d-{vm_id[:8]}", f"d-{other_vm[:8]}"
    try:
        disk = await node.prepare_disk(disk_id, image, 128 * MiB, storage, precache_bytes=16 * MiB)
        spec = spec_for(guests, vm_id, disk.path)
        assert node.cached_image(spec) == image.image_id
        await node.before_start(spec)
        await boot(driver, guests, vm_id, disk.path)
        node.after_start(spec)
        precache = cache.precache_task(vm_id)
        assert precache is not None and await asyncio.wait_for(precache, 120) == 16 * MiB
        first = await node.stats(spec, [spec])
        assert first is not None and first.hit_ratio is not None
        assert first.served_bytes >= 16 * MiB and first.ceph_read_bytes >= 16 * MiB
        assert first.hit_ratio < 0.1  # everything so far came from Ceph

        # a second VM of the image: its boot and its pre-cache are served by the node's cache
        second = await node.prepare_disk(other_disk, image, 128 * MiB, storage, precache_bytes=16 * MiB)
        other = spec_for(guests, other_vm, second.path)
        await node.before_start(other)
        await boot(driver, guests, other_vm, second.path)
        node.after_start(other)
        precache = cache.precache_task(other_vm)
        assert precache is not None and await asyncio.wait_for(precache, 120) == 16 * MiB
        again = await node.stats(spec, [spec, other])
        assert again is not None and again.hit_ratio is not None
        assert again.ceph_read_bytes == first.ceph_read_bytes
        assert again.served_bytes >= first.served_bytes + 16 * MiB
        assert again.hit_ratio >= 0.45
        print(f"hit ratio {first.hit_ratio:.2f} after one VM, {again.hit_ratio:.2f} after two")
        assert again.cache_bytes >= 16 * MiB
        await driver.stop(other_vm, force=True)
        node.after_stop(other_vm)

        await qemu_io(driver, vm_id, "write -P 0x66 90M 1M")
        await qemu_io(driver, vm_id, "flush")
        await driver.stop(vm_id, force=True)
        node.after_stop(vm_id)
        assert await node.release_unused([spec]) == []  # within the grace period of its start
        assert await node.release_unused([], grace=0) == [image.image_id]
        assert cache.owner_pid(image.image_id) is None

        # drop while stopped: the overlay's writes are committed into a new RBD clone
        clone = await node.drop(vm_id, disk_id, image, storage, running=False)
        assert not cache.overlay_path(disk_id).exists()
        assert admin_read(ceph, f"disk-{disk_id}", 90 * MiB, MiB) == b"\x66" * MiB
        assert admin_read(ceph, f"disk-{disk_id}", 0, 4) == b"\x42" * 4
        started = await driver.start(
            VmSpec(**{**spec.__dict__, "vm_id": rbd_vm, "disks": (DiskAttachment(clone.path, format="raw"),)})
        )
        assert started.state == PowerState.RUNNING
        await wait_until(lambda: MARKER in console_text(driver, rbd_vm), 240, "the marker from the RBD clone")

        # the image deleted from the cloud: the node's cache of it goes once nothing here reads it
        await node.release_unused([], grace=0)
        assert await node.sweep_deleted({image.image_id}) == []  # the cloud still has it
        assert await node.sweep_deleted(set()) == []  # the other VM's overlay still reads it
        await cache.delete_overlay(other_disk)
        swept = await node.sweep_deleted(set())
        assert [image_id for image_id, _ in swept] == [image.image_id]
        assert swept[0][1] >= 16 * MiB  # the pre-cached data it freed
        assert not cache.image_dir(image.image_id).exists()
    finally:
        for vm in (vm_id, other_vm, rbd_vm):
            await driver.stop(vm, force=True)
        await node.close()
        for made in (disk_id, other_disk):
            await cache.delete_overlay(made)
        await storage.delete_disk(disk_id)


async def test_an_image_uploaded_again_under_its_id_gets_a_fresh_cache(
    storage: RbdStorageDriver, cache: ImageCache, image: StoredImage, tmp_path: Path
) -> None:
    """The cache file belongs to one RBD image (its RBD id), not to a name: new data is never hidden."""
    url = await cache.ensure_owner(image, storage)

    def reads(pattern: str) -> bool:
        check = subprocess.run(
            ["qemu-io", "-f", "raw", "-r", "-c", f"read -P {pattern} 0 1M", url], capture_output=True, text=True
        )
        return check.returncode == 0 and "verification failed" not in check.stdout

    assert reads("0x42")
    assert await cache.stop_owner(image.image_id)
    await storage.delete_image(image.image_id)
    raw = tmp_path / "new.raw"
    with open(raw, "wb") as f:
        f.write(b"\x24" * (4 * MiB))
        f.truncate(image.virtual_size_bytes)  # same size, other data
    await storage.write_image(image.image_id, file_chunks(raw))
    again = await storage.finalize_image(image.image_id)
    assert again.virtual_size_bytes == image.virtual_size_bytes
    await cache.ensure_owner(again, storage)
    assert reads("0x24")


def cached_ranges(path: str) -> list[tuple[int, int]]:
    """(start, length) of the data a local qcow2 holds itself (not its backing)."""
    out = subprocess.run(
        ["qemu-img", "map", "-U", "--output=json", path], capture_output=True, text=True, check=True
    ).stdout
    return [(e["start"], e["length"]) for e in json.loads(out) if e["data"] and e["depth"] == 0]


def holds(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    return any(start <= offset and offset + length <= start + size for start, size in ranges)


async def test_a_cached_vms_rbd_volume_is_written_through_and_read_locally(
    ceph: CephCluster,
    storage: RbdStorageDriver,
    cache: ImageCache,
    image: StoredImage,
    driver: QemuDriver,
    guests: dict[str, Path],
) -> None:
    """quorum (fifo, vote-threshold 2) over [copy-on-read -> local qcow2 -> RBD read-only, RBD]:
    the guest's writes are in Ceph when they complete; what it read is then served locally."""
    import rados
    import rbd

    node = NodeCache(cache, driver)
    vm_id = str(uuid.uuid4())
    disk_id, volume_id = f"d-{vm_id[:8]}", f"vol-{vm_id[:8]}"
    try:
        volume = await storage.create_volume(volume_id, 64 * MiB)
        with (
            rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster,
            cluster.open_ioctx(ceph.pool) as ioctx,
            rbd.Image(ioctx, f"disk-{volume_id}") as handle,
        ):
            handle.write(b"\x11" * MiB, 0)
        root = await node.prepare_disk(disk_id, image, 128 * MiB, storage)
        spec = spec_for(guests, vm_id, root.path)
        spec = VmSpec(
            **{**spec.__dict__, "disks": (*spec.disks, DiskAttachment(volume.path, "raw", node_name="vol-t"))}
        )
        await node.before_start(spec)
        started = await node.with_volume_caches(spec)
        local = started.disks[1].cache_path
        assert local is not None and Path(local).exists() and cached_ranges(local) == []
        assert (await driver.start(started)).state == PowerState.RUNNING
        await wait_until(lambda: MARKER in console_text(driver, vm_id), 240, "the marker")
        assert "vdb" in console_text(driver, vm_id)

        async def io(command: str) -> None:
            error = await qmp(
                driver,
                vm_id,
                "human-monitor-command",
                {"command-line": f'qemu-io -d vol-t-dev/virtio-backend "{command}"'},
            )
            assert not error, error

        await io("read -P 0x11 0 1M")
        await io("flush")  # qcow2 keeps its allocation tables in memory until a flush
        assert holds(cached_ranges(local), 0, MiB)  # read once from Ceph, now local
        await io("write -P 0x22 2M 1M")
        await io("flush")
        assert admin_read(ceph, f"disk-{volume_id}", 2 * MiB, MiB) == b"\x22" * MiB  # in Ceph: write-through
        assert holds(cached_ranges(local), 2 * MiB, MiB)  # and served locally from now on
        await io("read -P 0x22 2M 1M")
        with pytest.raises(ComputeError, match="does not support resize"):  # quorum cannot grow: a clear refusal
            await driver.grow_disk(vm_id, "vol-t", 128 * MiB)

        await driver.stop(vm_id, force=True)
        node.after_stop(vm_id)
        assert not Path(local).exists()
    finally:
        await driver.stop(vm_id, force=True)
        node.after_stop(vm_id)
        await cache.delete_overlay(disk_id)
        await storage.delete_disk(volume_id)


def _write_after_blocklist(ceph: CephCluster, node: dict[str, Any], volume: str) -> tuple[str, bytes]:
    """Open ``node`` in qemu-io, write once, blocklist its Ceph clients, write again: (output, Ceph's bytes)."""
    import rados
    import rbd

    proc = subprocess.Popen(
        ["qemu-io", "json:" + json.dumps(node)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None
    blocklisted: list[str] = []
    try:
        proc.stdin.write("write -P 0x22 0 1M\nflush\n")
        proc.stdin.flush()
        with rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster:
            with cluster.open_ioctx(ceph.pool) as ioctx:

                def written() -> bool:
                    with rbd.Image(ioctx, volume, read_only=True) as image:
                        return bytes(image.read(0, 4)) == b"\x22" * 4

                end = time.monotonic() + 30
                while not written():
                    assert time.monotonic() < end, "the first write never reached Ceph"
                    time.sleep(0.05)
                with rbd.Image(ioctx, volume, read_only=True) as image:
                    addresses = [w["addr"] for w in image.watchers_list()]
            for address in addresses:  # Ceph now refuses this process: its writes fail
                command = {"prefix": "osd blocklist", "blocklistop": "add", "addr": address}
                assert cluster.mon_command(json.dumps(command), b"")[0] == 0
                blocklisted.append(address)
            out, _ = proc.communicate("write -P 0x33 2M 1M\nflush\nquit\n", timeout=60)
            with cluster.open_ioctx(ceph.pool) as ioctx, rbd.Image(ioctx, volume, read_only=True) as image:
                in_ceph = bytes(image.read(2 * MiB, 4))
            for address in blocklisted:
                cluster.mon_command(json.dumps({"prefix": "osd blocklist", "blocklistop": "rm", "addr": address}), b"")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, in_ceph


async def test_a_write_ceph_refuses_fails_through_the_write_through_cache(
    ceph: CephCluster, storage: RbdStorageDriver, tmp_path: Path
) -> None:
    """vote-threshold 2: a write Ceph refuses (the client blocklisted) fails for the guest, although
    the local child took it. With a threshold of 1 the same write would be reported done while
    Ceph lacks it: why the graph uses 2."""
    from bramble.compute.qemu.cmdline import disk_blockdev

    results: dict[int, tuple[str, bytes]] = {}
    made: list[str] = []
    try:
        for threshold in (2, 1):
            volume_id = f"wt{threshold}-{uuid.uuid4().hex[:6]}"
            volume = await storage.create_volume(volume_id, 64 * MiB)
            made.append(volume_id)
            local = tmp_path / f"{volume_id}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(local), str(64 * MiB)], check=True)
            node: dict[str, Any] = disk_blockdev(
                DiskAttachment(volume.path, "raw", node_name="v", cache_path=str(local)), "v"
            )
            assert node["vote-threshold"] == 2
            node["vote-threshold"] = threshold
            results[threshold] = await asyncio.to_thread(_write_after_blocklist, ceph, node, f"disk-{volume_id}")
    finally:
        for volume_id in made:
            await storage.delete_disk(volume_id)
    out, in_ceph = results[2]
    assert "write failed" in out, out  # the guest is told
    assert in_ceph == bytes(4)
    out, in_ceph = results[1]
    assert "wrote 1048576/1048576 bytes at offset 2097152" in out, out  # threshold 1: "done" ...
    assert in_ceph == bytes(4)  # ... yet not in Ceph
