"""`pool show` and `pool create` on Ceph RBD: Bramble's usage figure against `rbd du`.

A throwaway cluster (1 mon + 1 memstore OSD on 127.0.0.1, no manager, tests/ceph_cluster.py)
is started by this script. N images (8 MiB virtual, 4 MiB of data) are imported through
``RbdStorageDriver`` with a clone of each, as images and VM disks would be. Then, round after
round, in the same run:

* ``usage()``: what ``pool show`` runs (osd dump + df mon commands, then the allocated objects
  of Bramble's images with ``diff_iterate``, since the cluster has no manager);
* ``rbd du`` (CLI) on the same pool: the anchor, the same figure computed by Ceph's own tool
  (includes the CLI's start-up and connection);
* ``probe``: what ``pool create`` checks first (a fresh connection in a scratch directory,
  the pool opened and listed, closed), against ``rbd ls`` (CLI): a fresh connection that lists
  the pool, the anchor.

It also prints the used bytes both ways (they must agree) and, once each, how long the
refusals take: wrong key, missing Ceph pool, a monitor address where nothing listens
(the pool's timeout is ``--timeout``).

    .venv/bin/python bench/pool_usage.py [--rounds 7] [--images 20] [--timeout 3]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from _common import REPO, arg_parser, host_line, install_signal_cleanup, median, print_table

sys.path.insert(0, str(REPO))

from tests.ceph_cluster import CephCluster, ceph_cluster

from bramble.storage.driver import StorageError, StoredImage
from bramble.storage.pools import PoolSpec
from bramble.storage.rbd import RbdStorageDriver
from bramble.storage.registry import StorageRegistry

MiB = 1024**2


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def timed(step: Awaitable[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await step
    return (time.perf_counter() - started) * 1000, result


def rbd_cli(cluster: CephCluster, *args: str) -> str:
    env = cluster.client_env()
    return subprocess.run(["rbd", *args], env=env, capture_output=True, text=True, check=True).stdout


async def refusal_ms(registry: StorageRegistry, spec: PoolSpec) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        await registry.probe(spec)
    except StorageError as exc:
        return (time.perf_counter() - started) * 1000, str(exc)
    return (time.perf_counter() - started) * 1000, "accepted (unexpected)"


async def run(rounds: int, images: int, timeout: int) -> None:
    print(host_line())
    with ceph_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = PoolSpec(
            name="bench",
            driver="rbd",
            ceph_conf=str(cluster.conf),
            ceph_pool=cluster.pool,
            ceph_user=cluster.user,
            ceph_keyring=str(cluster.user_keyring),
            timeout_seconds=timeout,
        )
        registry = StorageRegistry(work / "state")
        driver = registry.driver(spec)
        assert isinstance(driver, RbdStorageDriver)
        try:
            started = time.monotonic()
            for n in range(images):
                await driver.write_image(f"i{n}", one_chunk(os.urandom(4 * MiB) + bytes(4 * MiB)))
                image: StoredImage = await driver.finalize_image(f"i{n}")
                await driver.clone_disk(f"d{n}", image, 0)
            print(f"{images} images (8 MiB, 4 MiB data) + {images} clones made in {time.monotonic() - started:.1f} s")
            ours = (await driver.usage()).used_bytes
            du = json.loads(rbd_cli(cluster, "du", "--format", "json", "-p", cluster.pool))
            theirs = int(du["total_used_size"])
            print(f"used bytes: usage() {ours / MiB:.0f} MiB, rbd du {theirs / MiB:.0f} MiB")

            results: dict[str, list[float]] = {"usage() (pool show)": [], "rbd du (CLI, anchor)": []}
            probes: dict[str, list[float]] = {"probe (pool create)": [], "rbd ls (CLI, anchor)": []}
            for n in range(rounds):
                for name in list(results)[n % 2 :] + list(results)[: n % 2]:
                    if name.startswith("usage"):
                        ms, _ = await timed(driver.usage())
                    else:
                        ms, _ = await timed(asyncio.to_thread(rbd_cli, cluster, "du", "-p", cluster.pool))
                    results[name].append(ms)
                for name in list(probes)[n % 2 :] + list(probes)[: n % 2]:
                    if name.startswith("probe"):
                        ms, _ = await timed(registry.probe(spec))
                    else:
                        ms, _ = await timed(asyncio.to_thread(rbd_cli, cluster, "ls", "-p", cluster.pool))
                    probes[name].append(ms)
            for title, table in (
                (f"pool usage over {2 * images} RBD images, {rounds} rounds (ms)", results),
                (f"open a pool from scratch, {rounds} rounds (ms)", probes),
            ):
                anchor = median(next(v for k, v in table.items() if "anchor" in k))
                rows = [
                    (name, f"{median(v):.0f}", f"{min(v):.0f}", f"{max(v):.0f}", f"{median(v) / anchor:.2f}x")
                    for name, v in table.items()
                ]
                print_table(title, ["operation", "median", "min", "max", "vs anchor"], rows)

            wrong = work / "wrong.keyring"
            key = await asyncio.to_thread(
                subprocess.run, ["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True
            )
            wrong.write_text(f"[client.{cluster.user}]\n\tkey = {key.stdout.strip()}\n")
            silent = work / "silent.conf"
            silent.write_text("[global]\nmon_host = [v2:127.0.0.1:9]\n")
            rows = []
            for label, bad in (
                ("wrong key", PoolSpec(**{**spec.__dict__, "ceph_keyring": str(wrong)})),
                ("missing Ceph pool", PoolSpec(**{**spec.__dict__, "ceph_pool": "no-such-pool"})),
                ("nothing listens", PoolSpec(**{**spec.__dict__, "ceph_conf": str(silent)})),
            ):
                ms, message = await refusal_ms(registry, bad)
                rows.append((label, f"{ms:.0f}", message[:90]))
            title = f"pool create refusals (timeout {timeout} s), one run each (ms)"
            print_table(title, ["case", "ms", "answer"], rows)
        finally:
            await registry.close()


def main() -> None:
    parser = arg_parser(__doc__ or "", rounds=7)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=3)
    args = parser.parse_args()
    install_signal_cleanup()
    asyncio.run(run(args.rounds, args.images, args.timeout))


if __name__ == "__main__":
    main()
