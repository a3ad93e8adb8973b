"""CPU cost of one DORA in Bramble's DhcpServer, counted in instructions (deterministic on a noisy host).

An in-process driver feeds pre-encoded relayed DISCOVERs (perfdhcp's shape: giaddr set, a fresh MAC
each, parameter request list 1,3,6,15,28) through the server's datagram path with a fake socket, then
the matching REQUESTs, with a real lease journal in a temp dir and an ``on_event`` callback that keeps
every ``DhcpEvent``. This is the DHCP library alone: the boot role's audit path comes on top of it
and is measured end to end by ``dhcp_rate.py --servers bramble`` (the daemon).
``valgrind --tool=callgrind`` counts the instructions of two runs that differ only in the measured
loop (this host has no PMU for ``perf stat -e instructions``), so interpreter start-up and packet
preparation cancel out. With ``--profile`` it prints a cProfile of the
same loop instead.

    .venv/bin/python bench/dhcp_cost.py [--count 2000] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bramble.boot.dhcp import DhcpConfig, DhcpServer
from bramble.boot.leases import LeaseStore
from bramble.proto.dhcp import DHCPDISCOVER, DHCPREQUEST, DhcpPacket, decode, encode

SERVER_IP, RELAY = IPv4Address("10.96.0.1"), IPv4Address("10.96.0.2")
SUBNET = IPv4Network("10.96.0.0/12")
RANGE = (IPv4Address("10.97.0.0"), IPv4Address("10.111.255.254"))
RELAY_ADDR = (str(RELAY), 67)


class _Socket:
    """Stands in for the server's UDP socket: keeps the last reply."""

    last = b""

    def sendto(self, data: bytes, target: tuple[str, int]) -> int:
        self.last = data
        return len(data)


def _config() -> DhcpConfig:
    return DhcpConfig(
        server_ip=SERVER_IP,
        subnet=SUBNET,
        range_start=RANGE[0],
        range_end=RANGE[1],
        router=SERVER_IP,
        lease_seconds=3600,
    )


def _server(work: Path) -> tuple[DhcpServer, _Socket]:
    config = _config()
    recent: collections.deque[object] = collections.deque(maxlen=1000)
    server = DhcpServer(config, LeaseStore(work / "leases.json", config.pool()), interface=None, on_event=recent.append)
    sock = _Socket()
    server._sockets.append(sock)  # type: ignore[arg-type]
    return server, sock


def _discover(i: int) -> bytes:
    mac = bytes((0x02, 0, *i.to_bytes(4, "big")))
    return encode(
        DhcpPacket(
            xid=i,
            giaddr=RELAY,
            chaddr=mac,
            options={53: bytes((DHCPDISCOVER,)), 55: bytes((1, 3, 6, 15, 28))},
        )
    )


def _request(i: int, offered: IPv4Address) -> bytes:
    mac = bytes((0x02, 0, *i.to_bytes(4, "big")))
    return encode(
        DhcpPacket(
            xid=i + 1,
            giaddr=RELAY,
            chaddr=mac,
            options={
                53: bytes((DHCPREQUEST,)),
                54: SERVER_IP.packed,
                50: offered.packed,
                55: bytes((1, 3, 6, 15, 28)),
            },
        )
    )


def _workload(count: int, work: Path) -> tuple[list[bytes], list[bytes]]:
    """The datagrams; the offered addresses come from a throwaway server (allocation is deterministic)."""
    server, sock = _server(work / "prep")
    discovers = [_discover(i) for i in range(count)]
    requests = []
    for i, data in enumerate(discovers):
        server._on_datagram(data, RELAY_ADDR)
        requests.append(_request(i, decode(sock.last).yiaddr))
    server.store.close()
    return discovers, requests


def inner(count: int, profile: bool, skip: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bramble-dhcp-cost-") as tmp:
        work = Path(tmp)
        (work / "prep").mkdir()
        discovers, requests = _workload(count, work)
        server, _ = _server(work)
        on_datagram = server._on_datagram

        def run() -> None:
            for data in discovers:
                on_datagram(data, RELAY_ADDR)
            for data in requests:
                on_datagram(data, RELAY_ADDR)

        if profile:
            prof = cProfile.Profile()
            prof.runcall(run)
            pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(40)
        elif not skip:
            run()
        server.store.close()
        stats = server.stats
        if not skip and (stats["acks"] != count or stats["offers"] != count):
            sys.exit(f"expected {count} offers and acks, got {stats}")


def _instructions(count: int, skip: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="bramble-dhcp-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [sys.executable, __file__, "--inner", "--count", str(count)] + (["--skip"] if skip else [])
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--", *argv],
            capture_output=True,
            check=True,
            timeout=3600,
        )
        match = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        if match is None:
            sys.exit(f"no summary in {out}")
        return int(match.group(1))


def measure(count: int) -> float:
    """Instructions per DORA: a full run minus a run without the measured loop, over ``count``."""
    return (_instructions(count, skip=False) - _instructions(count, skip=True)) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="DORAs per run (default 2000)")
    parser.add_argument("--skip", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the loop instead")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner or args.profile:
        inner(args.count, args.profile, args.skip)
        return
    print(f"instructions per DORA (callgrind, {args.count} DORAs): {measure(args.count):,.0f}")


if __name__ == "__main__":
    main()
