"""VM disk from a 10 GiB image on Ceph RBD: Bramble's clone against a full copy (``rbd cp``).

A throwaway cluster (1 mon + 1 memstore OSD on 127.0.0.1, tests/ceph_cluster.py) is
started by this script. A 10 GiB qcow2 with some data (default 256 MiB, spread over the
disk) is imported through ``RbdStorageDriver.write_image`` + ``finalize_image`` (a raw RBD
image with a protected ``base`` snapshot). Then, round after round, in the same run:

* ``clone_disk``: Bramble's driver, in-process, as the agent calls it (an RBD clone of
  ``img@base`` under a temporary name, renamed into place);
* ``clone_disk`` growing the disk to 20 GiB (clone + resize);
* librbd's clone call alone from Python (no temporary name, no rename), the floor;
* ``rbd clone`` (CLI) of the same snapshot, for reference (includes the CLI's start-up);
* ``rbd cp`` (CLI) of the same image: the anchor, a full copy of the data.

Each result is deleted (untimed) before the next round. The table shows median, min and
max milliseconds and each operation's time as a fraction of ``rbd cp``. Target: the clone
under 50 ms whatever the image size.

A second table times ``clone_disk`` alone for images of other virtual sizes (default 1 and
100 GiB, same data): a clone should cost the same whatever the image size.

    .venv/bin/python bench/rbd_clone.py [--rounds 7] [--data-mib 256] [--size-gib 10] [--scale-gib 1 100]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

from _common import REPO, arg_parser, host_line, install_signal_cleanup, median, print_table

sys.path.insert(0, str(REPO))

from tests.ceph_cluster import CephCluster, ceph_cluster

from bramble.storage.rbd import RbdStorageDriver

MiB = 1024**2
GiB = 1024**3
TARGET_MS = 50.0


def make_qcow2(path: Path, size_gib: int, data_mib: int) -> None:
    """A sparse qcow2 of ``size_gib`` with ``data_mib`` of data in 4 MiB pieces spread over it."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_gib}G"], check=True)
    pieces = max(1, data_mib // 4)
    stride = size_gib * GiB // pieces
    commands: list[str] = []
    for n in range(pieces):
        commands += ["-c", f"write -P {n % 251 + 1} {n * stride} 4M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(path)], check=True, capture_output=True)


async def file_chunks(path: Path, size: int = 4 * MiB) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def rbd_cli(cluster: CephCluster, *args: str) -> None:
    subprocess.run(["rbd", "-c", str(cluster.conf), *args], check=True, capture_output=True)


class BareLibrbd:
    """librbd's clone call alone (Bramble's user, own connection): what the driver adds is the rest."""

    def __init__(self, cluster: CephCluster) -> None:
        import rados

        self.cluster = rados.Rados(
            conffile=str(cluster.conf), rados_id=cluster.user, conf={"keyring": str(cluster.user_keyring)}
        )
        self.cluster.connect(timeout=10)
        self.ioctx = self.cluster.open_ioctx(cluster.pool)

    def clone(self, name: str) -> None:
        import rbd

        rbd.RBD().clone(self.ioctx, "img-bench", "base", self.ioctx, name)

    def remove(self, name: str) -> None:
        import rbd

        rbd.RBD().remove(self.ioctx, name)

    def close(self) -> None:
        self.ioctx.close()
        self.cluster.shutdown()


async def timed(action: Awaitable[object]) -> float:
    """Milliseconds to await ``action`` (a coroutine does not start before it is awaited)."""
    started = time.perf_counter()
    await action
    return (time.perf_counter() - started) * 1000


async def run(rounds: int, size_gib: int, data_mib: int, scale_gib: list[int]) -> None:
    print(host_line())
    started = time.monotonic()
    with ceph_cluster(osd_bytes=4 * (size_gib + 2) * GiB) as cluster, tempfile.TemporaryDirectory() as tmp:
        print(f"throwaway Ceph cluster up in {time.monotonic() - started:.1f} s ({cluster.directory})")
        work = Path(tmp)
        source = work / "image.qcow2"
        make_qcow2(source, size_gib, data_mib)
        driver = RbdStorageDriver(
            conf=cluster.conf, pool=cluster.pool, user=cluster.user, keyring=cluster.user_keyring, work_dir=work / "rbd"
        )
        try:
            t0 = time.monotonic()
            await driver.write_image("bench", file_chunks(source))
            image = await driver.finalize_image("bench")
            print(
                f"imported a {size_gib} GiB qcow2 holding {data_mib} MiB in {time.monotonic() - t0:.1f} s"
                f" -> RBD image {image.virtual_size_bytes / GiB:.0f} GiB, {image.size_bytes / MiB:.0f} MiB allocated"
            )
            parent = f"{cluster.pool}/img-bench@base"
            results: dict[str, list[float]] = {
                "clone_disk (driver)": [],
                "clone_disk + grow to 2x (driver)": [],
                "bare librbd clone, no rename (floor)": [],
                "rbd clone (CLI)": [],
                "rbd cp (CLI, anchor)": [],
            }
            bare = BareLibrbd(cluster)
            await driver.clone_disk("warmup", image, 0)  # first-use costs (connection, caches) out of the way
            await driver.delete_disk("warmup")
            for n in range(rounds):
                # rotate the order so no operation always runs right after another
                order = list(results)
                order = order[n % len(order) :] + order[: n % len(order)]
                for name in order:
                    if name == "clone_disk (driver)":
                        ms = await timed(driver.clone_disk(f"c{n}", image, 0))
                        cleanup = driver.delete_disk(f"c{n}")
                    elif name == "clone_disk + grow to 2x (driver)":
                        grow = 2 * image.virtual_size_bytes
                        ms = await timed(driver.clone_disk(f"g{n}", image, grow))
                        cleanup = driver.delete_disk(f"g{n}")
                    elif name == "bare librbd clone, no rename (floor)":
                        ms = await timed(asyncio.to_thread(bare.clone, f"bare-{n}"))
                        cleanup = asyncio.to_thread(bare.remove, f"bare-{n}")
                    elif name == "rbd clone (CLI)":
                        target = f"{cluster.pool}/cli-clone-{n}"
                        ms = await timed(asyncio.to_thread(rbd_cli, cluster, "clone", parent, target))
                        cleanup = asyncio.to_thread(rbd_cli, cluster, "rm", "--no-progress", target)
                    else:
                        target = f"{cluster.pool}/copy-{n}"
                        ms = await timed(asyncio.to_thread(rbd_cli, cluster, "cp", "--no-progress", parent, target))
                        cleanup = asyncio.to_thread(rbd_cli, cluster, "rm", "--no-progress", target)
                    results[name].append(ms)
                    await cleanup
            anchor = median(results["rbd cp (CLI, anchor)"])
            rows = []
            for name, values in results.items():
                mid = median(values)
                rows.append([name, f"{mid:.1f}", f"{min(values):.1f}", f"{max(values):.1f}", f"{mid / anchor:.4f}x"])
            print_table(
                f"{size_gib} GiB image, {data_mib} MiB of data, {rounds} rounds (ms; ratio: median / rbd cp median)",
                ["operation", "median", "min", "max", "vs rbd cp"],
                rows,
            )
            clone_ms = median(results["clone_disk (driver)"])
            verdict = "met" if clone_ms < TARGET_MS else "NOT met"
            print(
                f"\nclone_disk median {clone_ms:.1f} ms: target < {TARGET_MS:.0f} ms {verdict};"
                f" rbd cp is {anchor / clone_ms:.0f}x slower"
            )
            bare.close()
            if scale_gib:
                await clone_by_size(driver, work, rounds, data_mib, [*scale_gib, size_gib])
        finally:
            await driver.delete_image("bench", flatten=True)
            await driver.close()


async def clone_by_size(driver: RbdStorageDriver, work: Path, rounds: int, data_mib: int, sizes: list[int]) -> None:
    """clone_disk for images of several virtual sizes holding the same data: the time should not move."""
    rows = []
    for size in sorted(set(sizes)):
        source = work / f"scale-{size}.qcow2"
        make_qcow2(source, size, min(data_mib, size * 1024 // 4))
        image_id = f"scale-{size}"
        await driver.write_image(image_id, file_chunks(source))
        image = await driver.finalize_image(image_id)
        source.unlink()
        try:
            times = []
            for n in range(rounds):
                times.append(await timed(driver.clone_disk(f"s{size}-{n}", image, 0)))
                await driver.delete_disk(f"s{size}-{n}")
            rows.append([f"{size} GiB", f"{median(times):.1f}", f"{min(times):.1f}", f"{max(times):.1f}"])
        finally:
            await driver.delete_image(image_id, flatten=True)
    print_table(f"clone_disk by image size, {rounds} rounds (ms)", ["image", "median", "min", "max"], rows)


def main() -> None:
    install_signal_cleanup()
    parser = arg_parser(__doc__.splitlines()[0], rounds=7)
    parser.add_argument("--size-gib", type=int, default=10, help="virtual size of the image (default 10)")
    parser.add_argument("--data-mib", type=int, default=256, help="data written into it (default 256)")
    parser.add_argument(
        "--scale-gib",
        type=int,
        nargs="*",
        default=[1, 100],
        help="also time clone_disk for images of these sizes (default 1 100; none: skip)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.size_gib, args.data_mib, args.scale_gib))


if __name__ == "__main__":
    main()
