"""N VMs booted at once from one RBD image: straight from Ceph (anchor) against the node cache tier.

A throwaway Ceph cluster (tests/ceph_cluster.py) is started by this script. The x86_64 test
guest's 64 MiB disk, with 48 MiB of data written into it, is imported through the RBD driver.
Then, in the same run:

* ``rbd``: each VM's disk is an RBD clone (``disk-<id>``), opened by QEMU through librbd;
* ``cache cold``: each VM's disk is a local qcow2 overlay on the image's cache owner (one
  qemu-storage-daemon: copy-on-read -> qcow2 cache -> RBD), the cache file empty;
* ``cache warm``: the same again with the cache file left by the cold wave.

All VMs of a wave are started at once (128 MiB TCG guests). "Boot" is the guest's marker
followed by a read of its first 48 MiB through its own virtio-blk backend (qemu-io inside
the running QEMU): the test guest runs from an initramfs, so this read stands in for a
real guest reading its root file system. Bytes read from Ceph are the OSD's own
``op_r_out_bytes`` counter (same measure for every mode) and, for the cache, librbd's
``rd_bytes`` in the owner. Everything started is stopped by PID and removed.

    .venv/bin/python bench/cache_boot.py [--vms 10] [--read-mib 48]
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from _common import REPO, MarkerWatch, arg_parser, guest_dir, host_line, install_signal_cleanup, print_table, ratio

sys.path.insert(0, str(REPO))

from tests.ceph_cluster import CephCluster, ceph_cluster

from bramble.compute.driver import DiskAttachment, VmSpec
from bramble.compute.qemu.driver import QemuDriver
from bramble.storage.cache import ImageCache, _admin_command
from bramble.storage.driver import StoredImage
from bramble.storage.rbd import RbdStorageDriver

MiB = 1024**2


def osd_read_bytes(cluster: CephCluster) -> int:
    """Bytes the OSD has sent to clients' reads (its own perf counter)."""
    counters = _admin_command(cluster.directory / "run" / "ceph-osd.0.asok", {"prefix": "perf dump"})
    return int(counters["osd"]["op_r_out_bytes"])


async def file_chunks(path: Path, size: int = 4 * MiB) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


async def wave(
    driver: QemuDriver, guest: Path, disks: list[str], fmt: str, read_mib: int, tag: str
) -> tuple[float, float, list[str]]:
    """Start one VM per disk at once; seconds to all markers and to all boot reads done."""
    vm_ids = [f"{tag}-{n}-{uuid.uuid4().hex[:6]}" for n in range(len(disks))]
    specs = [
        VmSpec(
            vm_id=vm_id,
            name=vm_id,
            arch="x86_64",
            cpus=1,
            memory_mib=128,
            disks=(DiskAttachment(disk, format=fmt),),
            kernel=str(guest / "kernel"),
            initrd=str(guest / "initrd.gz"),
            cmdline="quiet",
        )
        for vm_id, disk in zip(vm_ids, disks, strict=True)
    ]
    watch = MarkerWatch([Path(driver.console_path(vm_id)) for vm_id in vm_ids])
    began = time.perf_counter()
    await asyncio.gather(*(driver.start(spec) for spec in specs))
    read_done: list[float] = []
    booted = [asyncio.Event() for _ in vm_ids]

    async def boot_read(index: int, vm_id: str) -> None:
        await booted[index].wait()
        vm = driver._live(vm_id)
        assert vm is not None and vm.qmp is not None
        line = f'qemu-io -d disk0-dev/virtio-backend "read 0 {read_mib}M"'
        await asyncio.wait_for(vm.qmp.execute("human-monitor-command", {"command-line": line}), 600)
        read_done.append(time.perf_counter())

    async def poll() -> None:
        end = time.monotonic() + 900
        while True:
            done = watch.poll()
            for index, seen in enumerate(watch.seen):
                if seen is not None:
                    booted[index].set()
            if done:
                return
            if time.monotonic() > end:
                raise TimeoutError("not every guest printed its marker within 900 s")
            await asyncio.sleep(0.05)

    readers = [asyncio.create_task(boot_read(i, vm_id)) for i, vm_id in enumerate(vm_ids)]
    await poll()
    await asyncio.gather(*readers)
    markers = max(s for s in watch.seen if s is not None) - began
    return markers, max(read_done) - began, vm_ids


async def main() -> None:
    parser = arg_parser(__doc__ or "", 1)
    parser.add_argument("--vms", type=int, default=10, help="VMs per wave (default 10)")
    parser.add_argument("--read-mib", type=int, default=48, help="MiB each guest reads at boot (default 48)")
    args = parser.parse_args()
    install_signal_cleanup()
    guest = guest_dir()
    print(host_line())
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    work = Path(tempfile.mkdtemp(prefix="brcb-", dir="/tmp"))
    rows: list[tuple[str, float, float, float, float | None]] = []
    try:
        with ceph_cluster(parent=str(work)) as cluster:
            storage = RbdStorageDriver(
                conf=cluster.conf,
                pool=cluster.pool,
                user=cluster.user,
                keyring=cluster.user_keyring,
                work_dir=work / "rbd",
            )
            cache = ImageCache(work / "c")
            driver = QemuDriver(work / "vms", accel="tcg", stop_timeout=10, start_timeout=300)
            disk = work / "disk.qcow2"
            shutil.copyfile(guest / "disk.qcow2", disk)
            await asyncio.to_thread(
                subprocess.run,
                ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x42 0 {args.read_mib}M", str(disk)],
                check=True,
                capture_output=True,
            )
            await storage.write_image("bench", file_chunks(disk))
            image: StoredImage = await storage.finalize_image("bench")
            started: list[str] = []
            try:
                # anchor: every VM on its own RBD clone
                clones = [await storage.clone_disk(f"rbd-{n}", image, 128 * MiB) for n in range(args.vms)]
                before = osd_read_bytes(cluster)
                markers, reads, ids = await wave(driver, guest, [c.path for c in clones], "raw", args.read_mib, "rbd")
                started += ids
                rows.append(("rbd (anchor)", markers, reads, (osd_read_bytes(cluster) - before) / MiB, None))
                for vm_id in ids:
                    await driver.stop(vm_id, force=True)

                for mode in ("cache cold", "cache warm"):
                    overlays = [
                        await cache.create_overlay(f"{mode[6:]}-{n}", image, 128 * MiB, storage)
                        for n in range(args.vms)
                    ]
                    before = osd_read_bytes(cluster)
                    librbd_before = (await cache.stats("bench")).ceph_read_bytes
                    markers, reads, ids = await wave(
                        driver, guest, [o.path for o in overlays], "qcow2", args.read_mib, mode[6:]
                    )
                    started += ids
                    librbd = (await cache.stats("bench")).ceph_read_bytes - librbd_before
                    rows.append((mode, markers, reads, (osd_read_bytes(cluster) - before) / MiB, librbd / MiB))
                    for vm_id in ids:
                        await driver.stop(vm_id, force=True)
            finally:
                for vm_id in started:
                    await driver.stop(vm_id, force=True)
                await driver.close()
                await cache.drop_image("bench")
                for n in range(args.vms):
                    await storage.delete_disk(f"rbd-{n}")
                await storage.delete_image("bench", flatten=True)
                await storage.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    anchor = rows[0]
    table = [
        [
            name,
            markers,
            reads,
            ceph,
            "-" if librbd is None else librbd,
            ratio(ceph, anchor[3]),
            ratio(reads, anchor[2]),
        ]
        for name, markers, reads, ceph, librbd in rows
    ]
    print_table(
        f"{args.vms} VMs booted at once from one image ({args.read_mib} MiB read by each guest)",
        [
            "mode",
            "s to all markers",
            "s to all reads",
            "MiB from Ceph (OSD)",
            "MiB librbd (owner)",
            "Ceph vs rbd",
            "time vs rbd",
        ],
        table,
    )
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    asyncio.run(main())
