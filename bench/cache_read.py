"""Read throughput: direct librbd (anchor) against a VM's view through the warm node cache.

A throwaway Ceph cluster (tests/ceph_cluster.py) is started by this script; an image with
``--data-mib`` of data (default 256) is written through the RBD driver. Then, round after
round in the same run, ``qemu-img bench`` (QEMU's own block layer, the code a guest's reads
go through) reads the data:

* ``librbd``: the image's ``base`` snapshot opened through librbd (what a VM without the
  cache tier reads);
* ``overlay, warm``: a VM's cache overlay (qcow2 -> NBD export of the image's cache owner ->
  copy-on-read -> qcow2 cache file), after one untimed pass has filled the cache.

Two patterns: sequential 1 MiB reads (queue depth 8) and 4 KiB reads striding 1 MiB
(queue depth 1, latency-bound). The table gives medians of the MiB/s and the ratio to librbd.

    .venv/bin/python bench/cache_read.py [--rounds 5] [--data-mib 256]
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from _common import REPO, arg_parser, host_line, install_signal_cleanup, median, print_table, ratio

sys.path.insert(0, str(REPO))

from tests.ceph_cluster import ceph_cluster

from bramble.storage.cache import ImageCache
from bramble.storage.rbd import RbdStorageDriver

MiB = 1024**2


async def pattern_chunks(total: int, size: int = 4 * MiB) -> AsyncIterator[bytes]:
    for n in range(total // size):
        yield bytes([n % 251 + 1]) * size


def bench(target: list[str], count: int, size: str, step: str, depth: int) -> float:
    """Seconds ``qemu-img bench`` needs for ``count`` reads of ``size`` every ``step`` bytes."""
    argv = ["qemu-img", "bench", "-c", str(count), "-s", size, "-S", step, "-d", str(depth), *target]
    began = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - began
    found = re.search(r"Run completed in ([0-9.]+) seconds", out)
    return float(found.group(1)) if found else elapsed


async def main() -> None:
    parser = arg_parser(__doc__ or "", 5)
    parser.add_argument("--data-mib", type=int, default=256, help="MiB of image data read (default 256)")
    args = parser.parse_args()
    install_signal_cleanup()
    print(host_line())
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    data = args.data_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="brcr-", dir="/tmp"))
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
            try:
                await storage.write_image("bench", pattern_chunks(data))
                image = await storage.finalize_image("bench")
                overlay = await cache.create_overlay("vm", image, image.virtual_size_bytes, storage)
                targets = {
                    "librbd": ["-f", "raw", storage.reference(storage.image_name("bench"), "base")],
                    "overlay, warm": ["-f", "qcow2", overlay.path],
                }
                patterns = {
                    "seq 1M qd8": (data // MiB, "1M", "1M", 8),
                    "4K stride 1M qd1": (data // MiB, "4K", "1M", 1),
                }
                await asyncio.to_thread(bench, targets["overlay, warm"], data // MiB, "1M", "1M", 8)  # fill the cache
                results: dict[tuple[str, str], list[float]] = {}
                for _ in range(args.rounds):
                    for pattern, (count, size, step, depth) in patterns.items():
                        for name, target in targets.items():
                            seconds = await asyncio.to_thread(bench, target, count, size, step, depth)
                            read = count * (MiB if size == "1M" else 4096)
                            results.setdefault((pattern, name), []).append(read / MiB / seconds)
                ceph = (await cache.stats("bench")).ceph_read_bytes
            finally:
                await cache.delete_overlay("vm")
                await cache.drop_image("bench")
                await storage.delete_image("bench", flatten=True)
                await storage.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for pattern in patterns:
        anchor = median(results[(pattern, "librbd")])
        for name in targets:
            value = median(results[(pattern, name)])
            rows.append(
                [
                    pattern,
                    name,
                    value,
                    min(results[(pattern, name)]),
                    max(results[(pattern, name)]),
                    ratio(value, anchor),
                ]
            )
    print_table(
        f"qemu-img bench over {args.data_mib} MiB, {args.rounds} rounds (MiB/s)",
        ["pattern", "path", "median", "min", "max", "vs librbd"],
        rows,
    )
    print(f"the cache owner read {ceph / MiB:.0f} MiB from Ceph in all (the warm-up pass: {args.data_mib} MiB)")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    asyncio.run(main())
