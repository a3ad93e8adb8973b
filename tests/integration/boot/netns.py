"""Throw-away network namespaces joined by a veth pair, for tests that need real DHCP traffic.

The veth is created inside the server namespace with its peer moved straight into the client one, so
nothing ever appears in (or routes through) the host's namespace; both namespaces are deleted on exit.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class NetnsPair:
    server_ns: str
    client_ns: str
    server_if: str
    client_if: str

    def set_client_mac(self, mac: str) -> None:
        ip("-n", self.client_ns, "link", "set", self.client_if, "down")
        ip("-n", self.client_ns, "addr", "flush", "dev", self.client_if)
        ip("-n", self.client_ns, "link", "set", self.client_if, "address", mac)
        ip("-n", self.client_ns, "link", "set", self.client_if, "up")


@contextmanager
def netns_pair(server_cidr: str, client_mac: str) -> Iterator[NetnsPair]:
    """Two fresh namespaces; ``server_cidr`` (a private test subnet) on the server end only."""
    tag = secrets.token_hex(3)
    pair = NetnsPair(f"bramble-dhcp-s-{tag}", f"bramble-dhcp-c-{tag}", "vs", "vc")
    created: list[str] = []
    try:
        for ns in (pair.server_ns, pair.client_ns):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "-n",
            pair.server_ns,
            "link",
            "add",
            pair.server_if,
            "type",
            "veth",
            "peer",
            "name",
            pair.client_if,
            "netns",
            pair.client_ns,
        )
        ip("-n", pair.server_ns, "addr", "add", server_cidr, "dev", pair.server_if)
        ip("-n", pair.server_ns, "link", "set", pair.server_if, "up")
        pair.set_client_mac(client_mac)
        yield pair
    finally:
        for ns in reversed(created):  # deleting a namespace deletes the veth in it
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10, check=False)


@dataclass(frozen=True)
class Lan:
    """A bridge in its own namespace with one namespace per host, each host's ``eth0`` on the bridge."""

    hub_ns: str
    bridge: str
    hosts: tuple[str, ...]  # namespace names
    interface: str = "eth0"

    def add_address(self, host: int, cidr: str) -> None:
        ip("-n", self.hosts[host], "addr", "add", cidr, "dev", self.interface)

    def mac(self, host: int) -> str:
        out = ip("-n", self.hosts[host], "-br", "link", "show", self.interface)
        return out.split()[2]


@contextmanager
def lan(hosts: int, macs: dict[int, str] | None = None) -> Iterator[Lan]:
    """``hosts`` fresh namespaces on one fresh bridge; everything is deleted on exit, also on failure."""
    tag = secrets.token_hex(3)
    net = Lan(f"bramble-lan-{tag}", "br0", tuple(f"bramble-h{i}-{tag}" for i in range(hosts)))
    created: list[str] = []
    try:
        for ns in (net.hub_ns, *net.hosts):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", net.hub_ns, "link", "add", net.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("-n", net.hub_ns, "link", "set", net.bridge, "up")
        for i, ns in enumerate(net.hosts):
            port = f"p{i}"
            ip("-n", net.hub_ns, "link", "add", port, "type", "veth", "peer", "name", net.interface, "netns", ns)
            ip("-n", net.hub_ns, "link", "set", port, "master", net.bridge, "up")
            if macs and i in macs:
                ip("-n", ns, "link", "set", net.interface, "address", macs[i])
            ip("-n", ns, "link", "set", net.interface, "up")
        yield net
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10, check=False)
