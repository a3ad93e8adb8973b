"""VM boot: Bramble (POST /v1/vms -> boot marker on the console) vs plain QEMU (spawn -> marker).

a. One VM, interleaved rounds (Bramble, raw, raw, Bramble, ...), each a fresh create; the
   VM is deleted (and the delete operation waited for) between rounds.
b. N VMs (default 20) at once: N concurrent POSTs vs N raw QEMU processes spawned together,
   until all N show the marker.

Both sides boot the same guest (the cached test guest: Debian cloud kernel + busybox
initramfs) with the same QEMU arguments the product builds (bramble.compute.qemu.cmdline):
-machine pc -accel tcg -cpu qemu64, -nodefaults, VGA + VNC on loopback, the serial console
appended to a file, a virtio-blk qcow2 overlay of the image, -kernel/-initrd/-append
"quiet panic=-1 console=ttyS0". The raw side just has no QMP, no -daemonize and no pidfile;
it is started in its own session (setsid), as -daemonize puts the product's QEMU, so both
get the same CPU share under CFS autogroup. The command lines are compared after the
warm-up round and a difference is printed. Both sides are timed by polling the serial log
file directly every 10 ms, with the same code.

    .venv/bin/python bench/vm_boot.py [--rounds 5] [--multi-rounds 1] [--vms 20] [--only single|multi]
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx

from _common import (  # bench/ is sys.path[0] when a script runs
    GUEST_CMDLINE,
    BenchDaemon,
    HostNoise,
    MarkerWatch,
    arg_parser,
    check,
    cpu_seconds,
    free_vnc_displays,
    guest_dir,
    host_line,
    import_guest,
    install_signal_cleanup,
    kill_pids,
    median,
    print_table,
    qemu_img_overlay,
    ratio,
    require_succeeded,
    temp_dir,
    wait_operation,
)

GIB = 1024**3
POLL = 0.01
IMAGE = "bench-guest"


def raw_argv(guest: Path, overlay: Path, console: Path, *, memory: int, vnc_display: int, name: str) -> list[str]:
    """The product's x86_64 command line (see cmdline.build_argv) minus QMP and daemonizing."""
    blockdev = {
        "driver": "qcow2",
        "node-name": "disk0",
        "read-only": False,
        "file": {"driver": "file", "filename": str(overlay), "read-only": False},
    }
    return [
        "qemu-system-x86_64",
        "-name",
        f"guest={name}",
        "-uuid",
        str(uuid.uuid4()),
        "-no-user-config",
        "-nodefaults",
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-smp",
        "1",
        "-m",
        f"{memory}M",
        "-vnc",
        f"127.0.0.1:{vnc_display}",
        "-device",
        "VGA",
        "-chardev",
        f"file,id=serial0,path={str(console).replace(',', ',,')},append=on",
        "-serial",
        "chardev:serial0",
        "-nic",
        "none",
        "-blockdev",
        json.dumps(blockdev, separators=(",", ":")),
        "-device",
        "virtio-blk-pci,drive=disk0,id=disk0-dev",
        "-kernel",
        str(guest / "kernel"),
        "-initrd",
        str(guest / "initrd.gz"),
        "-append",
        f"{GUEST_CMDLINE} console=ttyS0",
    ]


def _normalised(argv: list[str]) -> list[str]:
    """An argv with the per-run plumbing blanked out, to compare raw and product command lines."""
    out: list[str] = []
    skip = 0
    for i, arg in enumerate(argv):
        if skip:
            skip -= 1
            continue
        prev = argv[i - 1] if i else ""
        if arg in ("-daemonize",):
            continue
        if arg in ("-pidfile",):
            skip = 1
            continue
        if arg == "-mon" or (arg == "-chardev" and argv[i + 1].startswith("socket,id=qmp")):
            skip = 1
            continue
        if prev in ("-name", "-uuid", "-vnc", "-kernel", "-initrd"):
            out.append("*")
        elif prev == "-chardev" and arg.startswith("file,"):
            out.append("file,id=serial0,path=*,append=on")
        elif prev == "-blockdev":
            spec = json.loads(arg)
            spec["file"]["filename"] = "*"
            out.append(json.dumps(spec, sort_keys=True))
        else:
            out.append(arg)
    return out


def compare_with_product(product_argv: list[str], raw: list[str]) -> str:
    product = _normalised(product_argv)
    mine = _normalised(raw)
    if product == mine:
        return "raw argv == product argv (modulo QMP/daemonize/pidfile and per-run paths)"
    return f"WARNING: raw argv differs from the product's:\n  product: {product}\n  raw:     {mine}"


# ---------------------------------------------------------------- one side, one round
def _iso(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _qemu_pid(daemon: BenchDaemon, vm_id: str) -> int | None:
    try:
        return int((daemon.state_dir / "run" / vm_id / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def bramble_single(daemon: BenchDaemon, name: str, memory: int) -> dict[str, Any]:
    with daemon.client() as api:
        cpu0 = cpu_seconds(daemon.pid)
        wall0 = time.time()
        t0 = time.perf_counter()
        accepted = check(
            api.post("/v1/vms", json={"name": name, "image": IMAGE, "cpus": 1, "memory_mib": memory, "disk_gib": 1}),
            202,
        )
        t_202 = time.perf_counter()
        vm_id = accepted["vm"]["id"]
        [seen] = MarkerWatch([daemon.console_log(vm_id)]).wait(180, POLL)
        pid = _qemu_pid(daemon, vm_id)
        qemu_cpu = cpu_seconds(pid) if pid else math.nan
        daemon_cpu = cpu_seconds(daemon.pid) - cpu0
        op = require_succeeded(wait_operation(api, accepted["operation"]["id"]))
        spec = json.loads((daemon.state_dir / "run" / vm_id / "spec.json").read_text())
        finished = _iso(op.get("finished_at"))
        result = {
            "total": seen - t0,
            "accepted": t_202 - t0,
            "spawn": spec["started_at"] - wall0,  # the driver writes spec.json just before it runs qemu
            "op_done": (finished - wall0) if finished else math.nan,
            "qemu_cpu": qemu_cpu,
            "daemon_cpu": daemon_cpu,
            "argv": spec["argv"],
        }
        require_succeeded(wait_operation(api, check(api.delete(f"/v1/vms/{name}"), 202)["operation"]["id"]))
    return result


def raw_single(guest: Path, work: Path, memory: int, vnc_display: int, n: int) -> dict[str, Any]:
    overlay, console, stderr = (work / f"raw-{n}.{ext}" for ext in ("qcow2", "console.log", "stderr"))
    qemu_img_overlay(guest / "disk.qcow2", overlay, GIB)
    argv = raw_argv(guest, overlay, console, memory=memory, vnc_display=vnc_display, name=f"raw-{n}")
    with open(stderr, "wb") as err:
        t0 = time.perf_counter()
        proc = spawn_raw(argv, err)
    try:
        [seen] = MarkerWatch([console]).wait(180, POLL, alive=lambda: _alive([proc], stderr))
        qemu_cpu = cpu_seconds(proc.pid)
    finally:
        kill_pids([proc.pid])
        proc.wait()
    for path in (overlay, console, stderr):
        path.unlink(missing_ok=True)
    return {"total": seen - t0, "qemu_cpu": qemu_cpu, "argv": argv}


def spawn_raw(argv: list[str], err: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start raw QEMU in its own session, as -daemonize (setsid) puts the product's QEMU.

    With CFS autogroup (on by default) each session is one scheduling group: QEMUs left
    in this script's session would share one CPU share between them and lose to every
    other session on a busy host, while the product's daemonized ones get one share each.
    """
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
    )


def _alive(procs: list[subprocess.Popen[bytes]], stderr: Path) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"raw qemu exited with {proc.returncode}: {stderr.read_text()[-2000:]}")


# ---------------------------------------------------------------- N at once
def bramble_multi(daemon: BenchDaemon, count: int, memory: int, tag: str, noise: HostNoise) -> dict[str, Any]:
    names = [f"m{tag}-{i:02d}" for i in range(count)]
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)

    async def post_all() -> tuple[float, list[dict[str, Any]], list[float]]:
        async with daemon.async_client(limits=limits) as api:

            async def one(name: str) -> tuple[dict[str, Any], float]:
                body = {"name": name, "image": IMAGE, "cpus": 1, "memory_mib": memory, "disk_gib": 1}
                response = await api.post("/v1/vms", json=body)
                return check(response, 202), time.perf_counter()

            t0 = time.perf_counter()
            done = await asyncio.gather(*(one(n) for n in names))
            return t0, [d for d, _ in done], [t for _, t in done]

    cpu0 = cpu_seconds(daemon.pid)
    wall0 = time.time()
    t0, accepted, t_202 = asyncio.run(post_all())
    seen = MarkerWatch([daemon.console_log(a["vm"]["id"]) for a in accepted]).wait(900, POLL)
    steal = noise.steal()
    qemu_cpu = sum(cpu_seconds(pid) for a in accepted if (pid := _qemu_pid(daemon, a["vm"]["id"])))
    daemon_cpu = cpu_seconds(daemon.pid) - cpu0
    spawns = []
    with daemon.client() as api:
        for a in accepted:
            require_succeeded(wait_operation(api, a["operation"]["id"]))
            spec = json.loads((daemon.state_dir / "run" / a["vm"]["id"] / "spec.json").read_text())
            spawns.append(spec["started_at"] - wall0)
        deletes = [check(api.delete(f"/v1/vms/{n}"), 202)["operation"]["id"] for n in names]
        for op_id in deletes:
            require_succeeded(wait_operation(api, op_id))
    per_vm = [s - t0 for s in seen]
    return {
        "wall": max(per_vm),
        "first": min(per_vm),
        "median_vm": median(per_vm),
        "last_202": max(t_202) - t0,
        "last_spawn": max(spawns),
        "daemon_cpu": daemon_cpu,
        "qemu_cpu": qemu_cpu,
        "steal": steal,
    }


def raw_multi(guest: Path, work: Path, count: int, memory: int, vnc_first: int, noise: HostNoise) -> dict[str, Any]:
    overlays = [work / f"rawm-{i}.qcow2" for i in range(count)]
    consoles = [work / f"rawm-{i}.console.log" for i in range(count)]
    stderr = work / "rawm.stderr"
    for overlay in overlays:
        qemu_img_overlay(guest / "disk.qcow2", overlay, GIB)
    argvs = [
        raw_argv(guest, overlays[i], consoles[i], memory=memory, vnc_display=vnc_first + i, name=f"rawm-{i}")
        for i in range(count)
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(stderr, "wb") as err:
            t0 = time.perf_counter()
            for argv in argvs:
                procs.append(spawn_raw(argv, err))
            t_spawned = time.perf_counter() - t0
        seen = MarkerWatch(consoles).wait(900, POLL, alive=lambda: _alive(procs, stderr))
        steal = noise.steal()
        qemu_cpu = sum(cpu_seconds(p.pid) for p in procs)
    finally:
        kill_pids([p.pid for p in procs])
        for p in procs:
            p.wait()
    for path in (*overlays, *consoles, stderr):
        path.unlink(missing_ok=True)
    per_vm = [s - t0 for s in seen]
    return {
        "wall": max(per_vm),
        "first": min(per_vm),
        "median_vm": median(per_vm),
        "last_spawn": t_spawned,
        "qemu_cpu": qemu_cpu,
        "steal": steal,
    }


# ---------------------------------------------------------------- main
def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--multi-rounds", type=int, default=1, help="rounds of the N-at-once benchmark (default 1)")
    parser.add_argument("--vms", type=int, default=20, help="VMs in the N-at-once benchmark (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured single rounds first (default 1)")
    parser.add_argument("--memory", type=int, default=256, help="MiB per VM in the single benchmark (default 256)")
    parser.add_argument("--multi-memory", type=int, default=128, help="MiB per VM in the N-at-once one (default 128)")
    parser.add_argument("--only", choices=("single", "multi"), help="run one part only")
    args = parser.parse_args()
    install_signal_cleanup()
    print(host_line())
    print("accel: tcg (forced on both sides); marker detection: polling the serial log file directly every 10 ms")
    guest = guest_dir("x86_64")
    with temp_dir() as work:
        vnc_raw = free_vnc_displays(args.vms, start=300)
        vnc_daemon = free_vnc_displays(args.vms, start=400, avoid=[range(vnc_raw, vnc_raw + args.vms)])
        daemon = BenchDaemon(work, extra_compute={"vnc_first_display": vnc_daemon})
        with daemon:
            with daemon.client() as api:
                import_guest(api, IMAGE, guest)
            print(f"brambled pid {daemon.pid} on {daemon.url}, state dir {daemon.state_dir}")
            noise = HostNoise(work)
            if args.only in (None, "single"):
                run_single(daemon, guest, work, args, vnc_raw, noise)
            if args.only in (None, "multi"):
                run_multi(daemon, guest, work, args, vnc_raw, noise)


def run_single(daemon: BenchDaemon, guest: Path, work: Path, args: Any, vnc_raw: int, noise: HostNoise) -> None:
    mem = args.memory
    print(f"\n[a] single VM, -m {mem}, 1 vCPU: {args.warmup} warm-up + {args.rounds} measured interleaved rounds")
    for w in range(args.warmup):
        noise.start()
        b = bramble_single(daemon, f"warm-{w}", mem)
        r = raw_single(guest, work, mem, vnc_raw, -1 - w)
        print(f"  warm-up {w + 1}: bramble {b['total']:.3f} s, raw {r['total']:.3f} s, not counted ({noise.line()})")
        print("  " + compare_with_product(b["argv"], r["argv"]))
    bramble: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for n in range(args.rounds):
        noise.start()
        # alternate which side goes first so neither always runs right after the other
        order = ("bramble", "raw") if n % 2 == 0 else ("raw", "bramble")
        for side in order:
            if side == "bramble":
                bramble.append(bramble_single(daemon, f"single-{n}", mem))
            else:
                raw.append(raw_single(guest, work, mem, vnc_raw, n))
        print(f"  round {n + 1}: bramble {bramble[-1]['total']:.3f} s, raw {raw[-1]['total']:.3f} s ({noise.line()})")

    def row(label: object, b: dict[str, Any], r: dict[str, Any], rat: str) -> tuple[object, ...]:
        return (
            label,
            b["accepted"],
            b["spawn"],
            b["op_done"],
            b["daemon_cpu"],
            b["qemu_cpu"],
            r["qemu_cpu"],
            b["total"],
            r["total"],
            rat,
        )

    rows = [row(n + 1, b, r, ratio(b["total"], r["total"])) for n, (b, r) in enumerate(zip(bramble, raw, strict=True))]
    med_b = {k: median([b[k] for b in bramble]) for k in bramble[0] if k != "argv"}
    med_r = {k: median([r[k] for r in raw]) for k in raw[0] if k != "argv"}
    rows.append(row("median", med_b, med_r, ratio(med_b["total"], med_r["total"])))
    print_table(
        "single VM boot, seconds (bramble: offsets from sending the POST; cpu = CPU seconds used until the marker)",
        (
            "round",
            "b 202",
            "b qemu spawned",
            "b op done",
            "b daemon cpu",
            "b qemu cpu",
            "r qemu cpu",
            "bramble",
            "raw qemu",
            "ratio",
        ),
        rows,
    )
    paired = median([b["total"] / r["total"] for b, r in zip(bramble, raw, strict=True)])
    print(
        f"\n  RESULT single: bramble median {med_b['total']:.3f} s, raw median {med_r['total']:.3f} s, "
        f"ratio of medians {ratio(med_b['total'], med_r['total'])}, median of per-round ratios {paired:.2f}x "
        f"(target <= 1.10x); QEMU CPU to marker {med_b['qemu_cpu']:.2f} s vs {med_r['qemu_cpu']:.2f} s"
    )


def run_multi(daemon: BenchDaemon, guest: Path, work: Path, args: Any, vnc_raw: int, noise: HostNoise) -> None:
    count, mem = args.vms, args.multi_memory
    print(f"\n[b] {count} VMs at once, -m {mem}, 1 vCPU each: {args.multi_rounds} round(s)")
    rounds: list[dict[str, dict[str, Any]]] = []
    for n in range(args.multi_rounds):
        order = ("bramble", "raw") if n % 2 == 0 else ("raw", "bramble")
        results: dict[str, dict[str, Any]] = {}
        for side in order:
            noise.start()
            if side == "bramble":
                results[side] = bramble_multi(daemon, count, mem, str(n), noise)
            else:
                results[side] = raw_multi(guest, work, count, mem, vnc_raw, noise)
            print(f"  round {n + 1} {side}: all {count} up after {results[side]['wall']:.3f} s ({noise.line()})")
        rounds.append(results)

    timeline = []
    work_rows = []
    for n, res in enumerate(rounds):
        for side in ("bramble", "raw"):
            x = res[side]
            timeline.append(
                (n + 1, side, x.get("last_202", "-"), x["last_spawn"], x["first"], x["median_vm"], x["wall"])
            )
            work_rows.append(
                (
                    n + 1,
                    side,
                    x["qemu_cpu"],
                    x.get("daemon_cpu", "-"),
                    f"{x['steal']:.0f}%",
                    x["wall"] * (1 - x["steal"] / 100),
                )
            )
    print_table(
        f"{count} VMs at once, seconds from the first POST (bramble) / the first spawn (raw)",
        ("round", "side", "last 202", "last spawned", "first up", "median up", "all up"),
        timeline,
    )
    print_table(
        "work done until all were up: CPU seconds of all QEMUs and of brambled; CPU steal; all-up x (1 - steal)",
        ("round", "side", "qemu cpu", "daemon cpu", "steal", "steal-adjusted all up"),
        work_rows,
    )
    med_b = median([r["bramble"]["wall"] for r in rounds])
    med_r = median([r["raw"]["wall"] for r in rounds])
    adj_b = median([r["bramble"]["wall"] * (1 - r["bramble"]["steal"] / 100) for r in rounds])
    adj_r = median([r["raw"]["wall"] * (1 - r["raw"]["steal"] / 100) for r in rounds])
    print(
        f"\n  RESULT {count} at once: bramble {med_b:.3f} s, raw {med_r:.3f} s, ratio {ratio(med_b, med_r)} "
        f"(target <= 1.15x); steal-adjusted {adj_b:.1f} s vs {adj_r:.1f} s, {ratio(adj_b, adj_r)}"
    )


if __name__ == "__main__":
    main()
