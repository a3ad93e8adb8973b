"""Run ``DhcpServer`` or ``ProxyDhcpServer`` in the current (test) namespace; events go to a JSON-lines file.

Started by the integration tests through ``ip netns exec`` and stopped with SIGTERM by PID. With
``--http-base`` the stock ``PxePolicy`` answers PXE clients; ``--mode proxy`` needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import TextIO

from bramble.boot.dhcp import DhcpConfig, DhcpEvent, DhcpServer, ProxyDhcpServer
from bramble.boot.leases import LeaseStore
from bramble.boot.pxe import PxePolicy
from bramble.boot.ra import RaEvent, RouterAdvertiser


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("interface", "server-ip", "events"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("subnet", "range-start", "range-end", "router", "lease-file", "http-base"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--mode", choices=("authoritative", "proxy"), default="authoritative")
    parser.add_argument("--dns", action="append", default=[])
    parser.add_argument("--lease-seconds", type=int, default=3600)
    parser.add_argument("--quarantine-seconds", type=float, default=600)
    parser.add_argument("--ra", action="store_true", help="also send IPv6 router advertisements")
    parser.add_argument("--ra-prefix")
    parser.add_argument("--ra-interval", type=float, default=30)
    args = parser.parse_args()
    policy = None
    if args.http_base:
        policy = PxePolicy(tftp_server=IPv4Address(args.server_ip), http_base=args.http_base)
    out: TextIO = open(args.events, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def emit(event: DhcpEvent) -> None:
        out.write(json.dumps(event._asdict()) + "\n")

    server: DhcpServer | ProxyDhcpServer
    if args.mode == "proxy":
        assert policy is not None, "--mode proxy needs --http-base"
        server = ProxyDhcpServer(IPv4Address(args.server_ip), policy.choose, interface=args.interface, on_event=emit)
    else:
        config = DhcpConfig(
            server_ip=IPv4Address(args.server_ip),
            subnet=IPv4Network(args.subnet),
            range_start=IPv4Address(args.range_start),
            range_end=IPv4Address(args.range_end),
            router=IPv4Address(args.router) if args.router else None,
            dns=tuple(IPv4Address(d) for d in args.dns),
            lease_seconds=args.lease_seconds,
            quarantine_seconds=args.quarantine_seconds,
            boot_file_for=None if policy is None else policy.choose,
        )
        store = LeaseStore(Path(args.lease_file) if args.lease_file else None, config.pool())
        server = DhcpServer(config, store, interface=args.interface, on_event=emit)
    await server.start()
    ra = None
    if args.ra:
        prefix = IPv6Network(args.ra_prefix) if args.ra_prefix else None

        def emit_ra(event: RaEvent) -> None:
            out.write(json.dumps({"ra": dataclasses.asdict(event)}) + "\n")

        ra = RouterAdvertiser(args.interface, prefix, interval=args.ra_interval, on_event=emit_ra)
        await ra.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out.write(json.dumps({"ready": True}) + "\n")
    await stop.wait()
    if ra is not None:
        await ra.close()
    await server.close()
    out.write(json.dumps({"stats": server.stats}) + "\n")
    out.close()


if __name__ == "__main__":
    asyncio.run(main())
