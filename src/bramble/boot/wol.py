"""Wake-on-LAN: the magic packet, sent out of the interface that faces the machine.

A powered-off NIC has no address, so the packet is a UDP broadcast that only travels the
local segment. On a host with several provisioning networks the limited broadcast
255.255.255.255 would follow the routing table out of the wrong port, so the socket is bound
to the chosen interface (SO_BINDTODEVICE); `wake_interface_for` picks that interface from the
machine's last known IP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping

__all__ = ["magic_packet", "parse_mac", "send_wake", "wake_interface_for"]

_MAC = re.compile(r"[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")
_CISCO_MAC = re.compile(r"[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}")


def parse_mac(mac: str) -> bytes:
    """The 6 bytes of ``aa:bb:cc:dd:ee:ff``, ``aa-bb-..``, ``aabbccddeeff`` or ``aabb.ccdd.eeff``."""
    text = mac.strip()
    if not (_MAC.fullmatch(text) or _CISCO_MAC.fullmatch(text)):
        raise ValueError(f"bad MAC address {mac!r}: want aa:bb:cc:dd:ee:ff")
    return bytes.fromhex(re.sub(r"[:.-]", "", text))


def magic_packet(mac: str) -> bytes:
    """Six 0xff bytes, then the MAC sixteen times (102 bytes): what a WoL-armed NIC listens for."""
    return b"\xff" * 6 + parse_mac(mac) * 16


async def send_wake(
    mac: str,
    interface: str | None,
    *,
    port: int = 9,
    broadcast: str = "255.255.255.255",
) -> None:
    """Broadcast the magic packet for ``mac``, out of ``interface`` when given (root or CAP_NET_RAW)."""
    payload = magic_packet(mac)
    if interface is not None and (not interface or len(interface) > 15 or "/" in interface):
        raise ValueError(f"bad interface name {interface!r}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            except OSError as exc:
                raise OSError(exc.errno, f"cannot send on interface {interface}: {exc.strerror}") from None
        await asyncio.get_running_loop().sock_sendto(sock, payload, (broadcast, port))
    finally:
        sock.close()


def wake_interface_for(
    ip: str | None,
    interfaces: Mapping[str, str | Iterable[str]],
) -> str | None:
    """The interface (name -> its subnets or interface addresses in CIDR form) whose subnet holds ``ip``.

    The most specific subnet wins. Without an IP, or when no subnet holds it, the answer is the
    only interface if there is exactly one, else None (the caller then sends without binding).
    """
    if ip is not None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"bad IP address {ip!r}") from None
        best: tuple[int, str] | None = None
        for name, cidrs in interfaces.items():
            for cidr in [cidrs] if isinstance(cidrs, str) else cidrs:
                try:
                    network = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ValueError(f"interface {name}: bad subnet {cidr!r}") from None
                holds = address.version == network.version and address in network
                if holds and (best is None or network.prefixlen > best[0]):
                    best = (network.prefixlen, name)
        if best is not None:
            return best[1]
    if len(interfaces) == 1:
        return next(iter(interfaces))
    return None
