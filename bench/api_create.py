"""vm create through the API with the fake drivers: latency of the 202 and creates/second.

A fresh brambled with ``[compute] driver = "fake"`` and ``[storage] driver = "fake"`` (no
QEMU, no disks: this measures the control plane: HTTP, validation, placement, SQLite,
the operation runner). A tiny image (4 KiB of zeros as disk, 1 KiB "kernel") is uploaded,
then N creates (64 MiB, 1 vCPU, 1 GiB disk each) are sent with C in flight at a time over
httpx. Reported: p50/p99 latency of the 202 (and p50 of the first and last fifth, to see
whether a create gets slower as VMs pile up), accepted creates/second, the time until every
create operation has succeeded (from the operations' finished_at), and the CPU time brambled
used per create, which unlike the wall times hardly moves when other work shares the host.

The scheduler's overcommit ratios are raised (cpu and memory 1000) so N VMs fit on the
one fake node, which reports the host's CPUs and memory.

    .venv/bin/python bench/api_create.py [--rounds 1] [-n 500] [-c 8]
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx

from _common import (  # bench/ is sys.path[0] when a script runs
    BenchDaemon,
    arg_parser,
    check,
    cpu_seconds,
    host_line,
    import_image,
    install_signal_cleanup,
    median,
    percentile,
    print_table,
    temp_dir,
)

VM_BODY = {"image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1}


async def create_many(daemon: BenchDaemon, prefix: str, n: int, c: int) -> dict[str, Any]:
    """N creates, C at a time; returns latencies, accepted rate and the operation ids."""
    latencies: list[float] = []
    op_ids: list[str] = []
    names = iter(range(n))
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with daemon.async_client(limits=limits) as api:

        async def worker() -> None:
            for i in names:
                t = time.perf_counter()
                response = await api.post("/v1/vms", json={"name": f"{prefix}-{i:05d}", **VM_BODY})
                latencies.append(time.perf_counter() - t)
                op_ids.append(check(response, 202)["operation"]["id"])

        wall0 = time.time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        accepted = time.perf_counter() - t0

        # Wait (polling the audit log every 0.5 s, one cheap request) until every create has
        # ended, then read each operation for its status and finished_at.
        since = datetime.fromtimestamp(wall0).astimezone().isoformat()
        deadline = time.monotonic() + 600
        wanted = set(op_ids)
        while True:
            events = check(
                await api.get("/v1/events", params={"action": "vm.create", "since": since, "limit": 10000}), 200
            )
            ended = {e["operation_id"] for e in events if e.get("operation_id") in wanted}
            if len(ended) == len(wanted):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted) - len(ended)} create operations still running after 600 s")
            await asyncio.sleep(0.5)
        ops = []
        sem = asyncio.Semaphore(c)

        async def fetch(op_id: str) -> None:
            async with sem:
                ops.append(check(await api.get(f"/v1/operations/{op_id}"), 200))

        await asyncio.gather(*(fetch(o) for o in op_ids))
    failed = [o for o in ops if o["status"] != "succeeded"]
    finished = max(datetime.fromisoformat(o["finished_at"]).timestamp() for o in ops)
    return {
        "latencies": latencies,
        "accepted_s": accepted,
        "e2e_s": finished - wall0,
        "failed": failed,
    }


def one_round(n: int, c: int, warmup: int) -> dict[str, Any]:
    with temp_dir() as work:
        extra = {"memory_overcommit": 1000.0, "cpu_overcommit": 1000.0}
        with BenchDaemon(work, compute="fake", storage="fake", extra_compute=extra) as daemon:
            with daemon.client() as api:
                import_image(api, "tiny", {"disk": bytes(4096), "kernel": bytes(1024)})
            if warmup:
                asyncio.run(create_many(daemon, "warm", warmup, c))
            cpu0 = cpu_seconds(daemon.pid)
            result = asyncio.run(create_many(daemon, "vm", n, c))
            # CPU brambled used for the N creates and their operations (plus the polling);
            # unlike the wall times it hardly moves when other work shares the host.
            result["daemon_cpu"] = cpu_seconds(daemon.pid) - cpu0
            with daemon.client() as api:
                result["vms"] = len(check(api.get("/v1/vms"), 200))
    return result


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=1)
    parser.add_argument("-n", type=int, default=500, help="creates per round (default 500)")
    parser.add_argument("-c", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--warmup", type=int, default=16, help="unmeasured creates first (default 16)")
    args = parser.parse_args()
    install_signal_cleanup()
    print(host_line())
    print(
        f"fake compute + fake storage; {args.n} creates, concurrency {args.c}, "
        f"{args.rounds} round(s), a fresh daemon each"
    )
    print("(the httpx client runs on the same host and competes with brambled for the CPUs)")
    rows = []
    results = []
    for r in range(args.rounds):
        res = one_round(args.n, args.c, args.warmup)
        results.append(res)
        lat = res["latencies"]
        rows.append(
            (
                r + 1,
                percentile(lat, 50) * 1000,
                percentile(lat, 90) * 1000,
                percentile(lat, 99) * 1000,
                max(lat) * 1000,
                percentile(lat[: len(lat) // 5], 50) * 1000,
                percentile(lat[-(len(lat) // 5) :], 50) * 1000,
                args.n / res["accepted_s"],
                res["e2e_s"],
                args.n / res["e2e_s"],
                res["daemon_cpu"] * 1000 / args.n,
                len(res["failed"]),
                res["vms"],
            )
        )
        for op in res["failed"][:3]:
            print(f"  failed: {op['target']}: {op.get('error')}")
    print_table(
        "vm create (fake drivers), latency in ms",
        (
            "round",
            "p50",
            "p90",
            "p99",
            "max",
            "p50 first 20%",
            "p50 last 20%",
            "accepted/s",
            "all done s",
            "e2e ops/s",
            "daemon cpu ms/create",
            "failed",
            "vms listed",
        ),
        rows,
    )
    p50 = median([percentile(r["latencies"], 50) * 1000 for r in results])
    p99 = median([percentile(r["latencies"], 99) * 1000 for r in results])
    acc = median([args.n / r["accepted_s"] for r in results])
    e2e = median([args.n / r["e2e_s"] for r in results])
    cpu = median([r["daemon_cpu"] * 1000 / args.n for r in results])
    print(
        f"\n  RESULT api create: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {acc:.1f} creates/s accepted, "
        f"{e2e:.1f} ops/s end to end, {cpu:.1f} ms of brambled CPU per create (n={args.n}, c={args.c})"
    )


if __name__ == "__main__":
    main()
