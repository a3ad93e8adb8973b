"""Instructions per DHCP DORA of the real server processes, Bramble against Kea, counted by callgrind.

The rate sweep (``dhcp_rate.py``) measures what the issue asks (the highest zero-drop rate), but on a
two-core host shared with other work its figures move by 2x between runs. Instruction counts do not:
``valgrind --tool=callgrind`` counts every user-space instruction of the server process, whatever else
the machine is doing. Each server runs under callgrind in the same throwaway namespaces as the sweep
(``dhcp_rate.veth_namespaces``), twice: once idle for as long as the measured run lasts, once while
perfdhcp runs ``--exchanges`` slow DORAs (valgrind makes a server ~50x slower). Instructions per DORA
= (busy - idle) / completed DORAs, so start-up and shutdown cancel out. Kernel work (sockets, the lease
file write) is not counted, for either server.

The server kinds are ``dhcp_rate.py``'s: ``bramble`` is the real ``brambled`` boot role (boot chooser and
SQLite audit log included; it starts in about 1.5 min under callgrind, since it imports and migrates a
lot, and its audit writer thread is counted too), ``bramble-lib`` the bare ``DhcpServer`` script, ``kea``
and ``dnsmasq`` the anchors.

    .venv/bin/python bench/dhcp_instructions.py [--exchanges 400] [--rate 25]
        [--servers bramble,bramble-lib,kea]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import install_signal_cleanup, print_table
from dhcp_rate import SERVER_KINDS, Server, parse_perfdhcp, veth_namespaces


def instructions(name: str, namespaces: tuple[str, str], exchanges: int, rate: int) -> tuple[int, int]:
    """(instructions, completed DORAs) of one server process; exchanges=0 keeps it idle as long."""
    server_ns, client_ns = namespaces
    seconds = max(1, exchanges // rate) + 5
    with tempfile.TemporaryDirectory(prefix="bramble-bench-dhcp-cg-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        out = work / "callgrind.out"
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        server = Server(name, server_ns, work, wrapper=wrapper)
        acks = 0
        try:
            server.start()
            time.sleep(1.0)
            if exchanges:
                perf = subprocess.run(
                    ["ip", "netns", "exec", client_ns, "perfdhcp", "-4", "-l", "veth-c", "-r", str(rate),
                     "-R", "1000000", "-n", str(exchanges), "-W", "1000000"],
                    capture_output=True, text=True, timeout=seconds + 120, check=False,
                )  # fmt: skip
                acks = parse_perfdhcp(perf.stdout, name, rate, seconds).acks
                if not acks:
                    print(f"{name}: no DORA completed: {(perf.stdout + perf.stderr)[-800:]}", file=sys.stderr)
            else:
                time.sleep(seconds)
        finally:
            server.stop()
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        match = re.search(r"^summary: (\d+)", out.read_text(), re.M) if out.exists() else None
        if match is None:
            sys.exit(f"{name}: callgrind wrote no summary ({server.log_tail(1500)})")
        return int(match.group(1)), acks


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=400, help="DORAs perfdhcp starts (default 400)")
    parser.add_argument("--rate", type=int, default=25, help="DISCOVERs per second (default 25)")
    parser.add_argument("--servers", default="bramble,bramble-lib,kea", help=f"of {', '.join(SERVER_KINDS)}")
    args = parser.parse_args()
    names = [n for n in args.servers.split(",") if n]
    unknown = sorted(set(names) - set(SERVER_KINDS))
    if unknown or not names:
        parser.error(f"--servers: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(SERVER_KINDS)}")
    install_signal_cleanup()
    rows: list[list[str]] = []
    per_dora: dict[str, float] = {}
    with veth_namespaces() as namespaces:
        for name in names:
            idle, _ = instructions(name, namespaces, 0, args.rate)
            busy, acks = instructions(name, namespaces, args.exchanges, args.rate)
            per_dora[name] = (busy - idle) / acks if acks else float("nan")
            rows.append([name, f"{acks}", f"{idle:,}", f"{busy:,}", f"{per_dora[name]:,.0f}"])
    ours = [n for n in ("bramble", "bramble-lib") if n in per_dora]
    for row in rows:
        for mine in ours:
            theirs, reference = per_dora[row[0]], per_dora[mine]
            usable = row[0] != mine and reference == reference and reference > 0 and theirs == theirs
            row.append(f"{theirs / reference:.2f}x" if usable else "")
    print_table(
        f"User-space instructions per completed DORA (callgrind; {args.exchanges} exchanges at {args.rate}/s)",
        ["server", "DORAs", "idle run", "busy run", "instr/DORA", *(f"this/{mine}" for mine in ours)],
        rows,
    )
    print(
        "this/bramble above 1.00x: that server needs more instructions per exchange than the brambled boot role "
        "(bramble); this/bramble-lib: the same against the bare DhcpServer."
    )


if __name__ == "__main__":
    main()
