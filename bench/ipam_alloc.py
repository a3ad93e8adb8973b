"""IPAM under load: VM creates with a NIC, 50 at once, on SQLite, against the same creates without one.

In-process (no HTTP): ``build_services`` with the fake compute, storage and network drivers and
SQLite in a temp dir, so what is measured is the control plane's write path. Each round sends
C concurrent ``VmService.create`` calls (default 50) and times each until it returns: by then
the VM row is in and, with a NIC, its address and MAC are decided in the same write transaction
(the part under test). The anchor is the same round without ``--net``: placement, the name check,
the VNC display and the insert, which every create pays anyway. The VMs are created stopped
(``--no-start``), so background starts (and the agent's per-plug firewall compile) do not share
the event loop with the creates being timed. Rounds alternate, so host noise
hits both. Reported per variant: creates/second of the round (C / round wall time), p50/p99 of
one create's latency, and the ratio to the anchor. Addresses come from a /16, so the pool never
runs dry; after the last round every NIC address is checked to be unique (a benchmark that
handed out duplicates would be measuring a bug).

A second table isolates the allocation: C concurrent write transactions, each deciding one
NIC's address and MAC with ``NetworkService.allocate`` and inserting it (for VM rows made
beforehand), against the anchor of the same transactions inserting a NIC whose address and MAC
were computed up front: the difference is the IPAM decision (the reads of the addresses in use
and the releases, the search, the MAC check).

    .venv/bin/python bench/ipam_alloc.py [--rounds 5] [-c 50]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from _common import arg_parser, host_line, median, percentile, print_table  # bench/ is sys.path[0]
from bramble.config import Settings
from bramble.core.context import RequestContext
from bramble.core.networks import NetworkRequest, NicRequest
from bramble.core.vms import VmRequest
from bramble.daemon import Services, build_services
from bramble.db.models import ImageRow, NicRow, VmRow, utcnow

CTX = RequestContext(actor="bench")


async def make_image(services: Services) -> None:
    async with services.db.write() as session:
        session.add(
            ImageRow(
                id="bench-image",
                name="tiny",
                arch="x86_64",
                status="active",
                format="qcow2",
                size_bytes=4096,
                virtual_size_bytes=4096,
                path="/nonexistent/disk",
                kernel_path="/nonexistent/kernel",
                created_at=utcnow(),
            )
        )


async def one_round(services: Services, prefix: str, c: int, with_nic: bool) -> tuple[float, list[float]]:
    nics = (NicRequest(network="bench"),) if with_nic else ()
    latencies: list[float] = []

    async def create(i: int) -> None:
        t = time.perf_counter()
        await services.cloud.vms.create(
            CTX,
            VmRequest(
                name=f"{prefix}-{i:03d}", image="tiny", cpus=1, memory_mib=64, disk_gib=1, nics=nics, start=False
            ),
        )
        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(c)))
    wall = time.perf_counter() - t0
    await services.cloud.deps.runner.drain(timeout=600)  # the background starts, outside the timing
    return wall, latencies


async def make_vm_rows(services: Services, prefix: str, c: int) -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(c)]
    async with services.db.write() as session:
        for vm_id in ids:
            session.add(
                VmRow(
                    id=vm_id, name=vm_id, arch="x86_64", cpus=1, memory_mib=64, disk_gib=1,
                    image_id="bench-image", desired_state="stopped", state="stopped",
                )
            )  # fmt: skip
    return ids


async def allocation_round(
    services: Services, prefix: str, c: int, decide: bool, base: int
) -> tuple[float, list[float]]:
    """C concurrent write transactions that each add one NIC, deciding its address (or not)."""
    vm_ids = await make_vm_rows(services, prefix, c)
    network = await services.cloud.networks.get("bench")
    latencies: list[float] = []

    async def one(i: int, vm_id: str) -> None:
        t = time.perf_counter()
        async with services.db.write() as session:
            await services.db.serialize(session, "vm-placement")
            if decide:
                await services.cloud.networks.allocate(session, vm_id, [NicRequest(network="bench")], [network])
            else:
                value = base + i
                session.add(
                    NicRow(
                        id=f"{vm_id}-nic", vm_id=vm_id, network_id=network.id, position=0,
                        address=f"10.128.{200 + value // 250}.{value % 250 + 1}",  # above what IPAM reaches here
                        mac=f"02:b7:ff:{value >> 16 & 255:02x}:{value >> 8 & 255:02x}:{value & 255:02x}",
                        created_at=utcnow(),
                    )
                )  # fmt: skip
        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, vm_id) for i, vm_id in enumerate(vm_ids)))
    return time.perf_counter() - t0, latencies


def table_rows(results: dict[bool, tuple[list[float], list[float]]], labels: tuple[str, str]) -> list[tuple[str, ...]]:
    anchor_rate = median(results[False][0])
    rows = []
    for flag, label in zip((False, True), labels, strict=True):
        rates, lat = results[flag]
        rows.append(
            (
                label,
                f"{median(rates):.0f}",
                f"{percentile(lat, 50) * 1000:.1f}",
                f"{percentile(lat, 99) * 1000:.1f}",
                f"{median(rates) / anchor_rate:.2f}x",
            )
        )
    return rows


async def main_async(rounds: int, c: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bramble-bench-ipam-") as tmp:
        settings = Settings(
            state_dir=Path(tmp),
            node_name="bench",
            compute={"driver": "fake", "cpu_overcommit": 10000, "memory_overcommit": 10000},  # type: ignore[arg-type]
            storage={"driver": "fake"},  # type: ignore[arg-type]
            agent={"reconcile_interval_seconds": 3600, "heartbeat_seconds": 3600},  # type: ignore[arg-type]
            roles=["agent"],
        )
        services = await build_services(settings)
        try:
            await make_image(services)
            await services.cloud.networks.create(CTX, NetworkRequest(name="bench", cidr="10.128.0.0/16"))
            results: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
            for r in range(rounds):
                for with_nic in (False, True):
                    wall, lat = await one_round(services, f"r{r}-{'nic' if with_nic else 'bare'}", c, with_nic)
                    results[with_nic][0].append(c / wall)
                    results[with_nic][1].extend(lat)
            alloc: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
            for r in range(rounds):
                for decide in (False, True):
                    prefix = f"a{r}-{'ipam' if decide else 'fixed'}"
                    wall, lat = await allocation_round(services, prefix, c, decide, base=r * c)
                    alloc[decide][0].append(c / wall)
                    alloc[decide][1].extend(lat)
            async with services.db.read() as session:
                total = await session.scalar(select(func.count()).select_from(NicRow))
                distinct = await session.scalar(select(func.count(func.distinct(NicRow.address))))
            expected = rounds * c * 3  # creates with a NIC, IPAM allocations, pre-computed inserts
            assert total == distinct == expected, f"{total} NICs, {distinct} distinct addresses"
        finally:
            await services.close()

    print(host_line())
    print_table(
        f"VM creates, {c} concurrent, on SQLite, {rounds} rounds each (fake compute, in-process)",
        ["variant", "creates/s (median round)", "p50 ms", "p99 ms", "rate vs anchor"],
        table_rows(results, ("create, no NIC (anchor)", "create + IPAM allocation")),
    )
    print_table(
        f"NIC write transactions, {c} concurrent, on SQLite, {rounds} rounds each",
        ["variant", "allocations/s (median round)", "p50 ms", "p99 ms", "rate vs anchor"],
        table_rows(alloc, ("insert with precomputed address (anchor)", "IPAM decide + insert")),
    )
    print(f"{expected} NICs, {expected} distinct addresses")


def main() -> None:
    parser = arg_parser(__doc__ or "", rounds=5)
    parser.add_argument("-c", type=int, default=50, help="concurrent creates per round")
    args = parser.parse_args()
    asyncio.run(main_async(args.rounds, args.c))


if __name__ == "__main__":
    main()
