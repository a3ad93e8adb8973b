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
