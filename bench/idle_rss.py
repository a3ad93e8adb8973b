"""Resident memory of the all-in-one brambled: idle, and with one VM running.

A fresh brambled (api + agent roles, qemu compute driver with accel tcg, local storage)
is started; once /v1/health answers it is left alone for --idle seconds (default 5) and
VmRSS/VmHWM are read from /proc/PID/status, plus the RSS of any child processes. Then
the test guest is imported, one VM (128 MiB, 1 vCPU) is created and booted to its
console marker, the daemon is left idle again, and its RSS is read once more: QEMU is
daemonized (not a child of brambled) and is reported separately, not counted. The
daemon's CPU use during each idle window is printed too.

    .venv/bin/python bench/idle_rss.py [--rounds 2] [--idle 5]
"""

from __future__ import annotations

import time
from typing import Any

from _common import (  # bench/ is sys.path[0] when a script runs
    BenchDaemon,
    MarkerWatch,
    arg_parser,
    check,
    child_pids,
    cpu_seconds,
    free_vnc_displays,
    guest_dir,
    host_line,
    import_guest,
    install_signal_cleanup,
    median,
    print_table,
    proc_status_kib,
    qemu_pids_naming,
    require_succeeded,
    temp_dir,
    wait_operation,
)

TARGET_MIB = 150


def idle_for(pid: int, seconds: float) -> float:
    """Leave the daemon alone for ``seconds`` (deadline-based); return its CPU use in % of a core."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    deadline = t0 + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
    return 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def sample(pid: int) -> dict[str, Any]:
    kids = child_pids(pid)
    return {
        "rss": (proc_status_kib(pid, "VmRSS") or 0) / 1024,
        "hwm": (proc_status_kib(pid, "VmHWM") or 0) / 1024,
        "threads": proc_status_kib(pid, "Threads") or 0,  # "Threads:" is a plain count
        "children": len(kids),
        "children_rss": sum(proc_status_kib(k, "VmRSS") or 0 for k in kids) / 1024,
    }


def one_round(idle: float) -> dict[str, Any]:
    guest = guest_dir("x86_64")
    with temp_dir() as work:
        daemon = BenchDaemon(work, extra_compute={"vnc_first_display": free_vnc_displays(1, start=500)})
        with daemon:
            cpu = idle_for(daemon.pid, idle)
            empty = sample(daemon.pid) | {"cpu": cpu}
            with daemon.client() as api:
                import_guest(api, "bench-guest", guest)
                body = {"name": "rss-vm", "image": "bench-guest", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
                accepted = check(api.post("/v1/vms", json=body), 202)
                vm_id = accepted["vm"]["id"]
                require_succeeded(wait_operation(api, accepted["operation"]["id"]))
                MarkerWatch([daemon.console_log(vm_id)]).wait(180)
                cpu = idle_for(daemon.pid, idle)
                one_vm = sample(daemon.pid) | {"cpu": cpu}
                qemu = qemu_pids_naming(daemon.state_dir)
                one_vm["qemu_rss"] = sum(proc_status_kib(p, "VmRSS") or 0 for p in qemu) / 1024
                require_succeeded(wait_operation(api, check(api.delete("/v1/vms/rss-vm"), 202)["operation"]["id"]))
    return {"idle": empty, "one_vm": one_vm}


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=2)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds left idle before each reading (default 5)")
    args = parser.parse_args()
    install_signal_cleanup()
    print(host_line())
    print(f"brambled all-in-one (api+agent, qemu/tcg, local storage); fresh daemon per round, {args.idle:g} s idle")
    results = [one_round(args.idle) for _ in range(args.rounds)]
    rows = []
    for n, r in enumerate(results):
        i, v = r["idle"], r["one_vm"]
        for label, x in (("idle", i), ("1 VM", v)):
            rows.append(
                (
                    label,
                    n + 1,
                    x["rss"],
                    x["hwm"],
                    x["threads"],
                    x["children"],
                    x["children_rss"],
                    f"{x['cpu']:.1f}%",
                    x.get("qemu_rss", "-"),
                )
            )
    print_table(
        "brambled memory, MiB (VmRSS / VmHWM of the daemon process; QEMU not included in RSS)",
        ("state", "round", "VmRSS", "VmHWM", "threads", "children", "child RSS", "idle cpu", "qemu RSS (excl.)"),
        rows,
    )
    idle_rss = median([r["idle"]["rss"] for r in results])
    vm_rss = median([r["one_vm"]["rss"] for r in results])
    print(
        f"\n  RESULT idle RSS: {idle_rss:.1f} MiB idle, {vm_rss:.1f} MiB with 1 VM running "
        f"(daemon only; target < {TARGET_MIB} MiB)"
    )


if __name__ == "__main__":
    main()
