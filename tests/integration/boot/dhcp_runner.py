"""Run ``DhcpServer`` in the current (test) namespace; events go to a JSON-lines file.

Started by the integration tests through ``ip netns exec`` and stopped with SIGTERM by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TextIO

from bramble.boot.dhcp import DhcpConfig, DhcpEvent, DhcpServer
from bramble.boot.leases import LeaseStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("interface", "server-ip", "subnet", "range-start", "range-end", "router", "lease-file", "events"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--dns", action="append", default=[])
    parser.add_argument("--lease-seconds", type=int, default=3600)
    parser.add_argument("--quarantine-seconds", type=float, default=600)
    args = parser.parse_args()
    config = DhcpConfig(
        server_ip=IPv4Address(args.server_ip),
        subnet=IPv4Network(args.subnet),
        range_start=IPv4Address(args.range_start),
        range_end=IPv4Address(args.range_end),
        router=IPv4Address(args.router),
        dns=tuple(IPv4Address(d) for d in args.dns),
        lease_seconds=args.lease_seconds,
        quarantine_seconds=args.quarantine_seconds,
    )
    store = LeaseStore(Path(args.lease_file), config.pool())
    out: TextIO = open(args.events, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def emit(event: DhcpEvent) -> None:
        out.write(json.dumps(dataclasses.asdict(event)) + "\n")

    server = DhcpServer(config, store, interface=args.interface, on_event=emit)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out.write(json.dumps({"ready": True}) + "\n")
    await stop.wait()
    await server.close()
    out.close()


if __name__ == "__main__":
    asyncio.run(main())
