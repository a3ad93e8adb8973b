"""IPv6 Router Advertisements on a provisioning link, so that iPXE does not wait for one.

iPXE configures IPv4 and IPv6 together and, on a link without a router, waits about 13 s for an RA
before it gives up on IPv6. One RA (with M and O clear: no DHCPv6) ends that wait at once. We send RAs
with router lifetime 0, so no host ever uses us as its default router (RFC 4861 6.2.3), and optionally
a prefix for SLAAC. Unsolicited RAs go out at start and every ``interval`` seconds; Router
Solicitations are answered within ``min_gap`` seconds. ICMPv6 on a raw socket bound to the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Network
from pathlib import Path

__all__ = ["RaEvent", "RouterAdvertiser", "build_router_advertisement"]

log = logging.getLogger(__name__)

ICMP6_ROUTER_SOLICIT = 133
ICMP6_ROUTER_ADVERT = 134
_ALL_NODES = "ff02::1"
_ALL_ROUTERS = "ff02::2"
_OPT_SOURCE_LLADDR = 1
_OPT_PREFIX_INFO = 3
_PREFIX_ON_LINK, _PREFIX_AUTONOMOUS = 0x80, 0x40
_ICMP6_FILTER = 1  # <linux/icmpv6.h>: a bit set blocks that type


@dataclass(frozen=True)
class RaEvent:
    """One RA sent: ``solicited_by`` is the soliciting host's address, None for a periodic one."""

    interface: str
    solicited_by: str | None
    prefix: str | None


def build_router_advertisement(
    mac: bytes | None,
    prefix: IPv6Network | None,
    *,
    router_lifetime: int = 0,
    hop_limit: int = 64,
    valid_lifetime: int = 86400,
    preferred_lifetime: int = 14400,
) -> bytes:
    """ICMPv6 type 134 (RFC 4861 4.2) with a zero checksum: the kernel fills it in on raw ICMPv6 sockets."""
    body = struct.pack("!BBHBBHII", ICMP6_ROUTER_ADVERT, 0, 0, hop_limit, 0, router_lifetime, 0, 0)
    if mac is not None and len(mac) == 6:
        body += struct.pack("!BB6s", _OPT_SOURCE_LLADDR, 1, mac)
    if prefix is not None:
        body += struct.pack(
            "!BBBBIII16s",
            _OPT_PREFIX_INFO,
            4,
            prefix.prefixlen,
            _PREFIX_ON_LINK | (_PREFIX_AUTONOMOUS if prefix.prefixlen == 64 else 0),
            valid_lifetime,
            preferred_lifetime,
            0,
            prefix.network_address.packed,
        )
    return body


class RouterAdvertiser:
    """Router Advertisements on ``interface`` (root: raw socket); ``start()`` then ``close()``."""

    def __init__(
        self,
        interface: str,
        prefix: IPv6Network | None = None,
        *,
        interval: float = 30.0,
        min_gap: float = 0.2,
        on_event: Callable[[RaEvent], None] | None = None,
    ) -> None:
        if prefix is not None and prefix.version != 6:
            raise ValueError(f"RA prefix {prefix} is not IPv6")
        self.interface, self.prefix = interface, prefix
        self.interval, self.min_gap = interval, min_gap
        self._on_event = on_event
        self.stats: dict[str, int] = dict.fromkeys(("sent", "solicitations", "malformed", "errors"), 0)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pending: list[str | None] = []
        self._packet = b""

    async def start(self) -> None:
        ifindex = socket.if_nametoindex(self.interface)
        mac = _mac_of(self.interface)
        self._packet = build_router_advertisement(mac, self.prefix)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0")
            # RFC 4861: RAs and RSs with any other hop limit are forgeries from off-link and are dropped.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            group = socket.inet_pton(socket.AF_INET6, _ALL_ROUTERS) + struct.pack("@I", ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
            blocked = [0xFFFFFFFF] * 8
            blocked[ICMP6_ROUTER_SOLICIT >> 5] &= ~(1 << (ICMP6_ROUTER_SOLICIT & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("@8I", *blocked))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._on_readable)
        self._task = asyncio.create_task(self._run(), name=f"ra-{self.interface}")
        log.info("ra: advertising on %s (prefix %s, router lifetime 0)", self.interface, self.prefix)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def nudge(self) -> None:
        """Send an advertisement soon (rate-limited by ``min_gap``), e.g. when a PXE client appears.

        A client that booted after our last periodic advertisement needs one now: iPXE waits ~13 s for
        IPv6 otherwise. Answering its Router Solicitation should suffice, but solicitations from QEMU
        guests on a bridge were not seen by the raw socket in our tests, so the boot role also nudges
        on every DHCP DISCOVER from a network-booting client.
        """
        self._pending.append(None)
        self._wake.set()

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, addr = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.stats["errors"] += 1
                log.debug("ra: receive failed on %s: %s", self.interface, exc)
                return
            if len(data) < 8 or data[0] != ICMP6_ROUTER_SOLICIT or data[1] != 0:
                self.stats["malformed"] += 1
                continue
            self.stats["solicitations"] += 1
            source = str(addr[0]).split("%")[0]
            self._pending.append(None if source == "::" else source)
            self._wake.set()

    async def _run(self) -> None:
        """Send at start (retrying until the link-local address is usable), then periodically and on RS."""
        loop = asyncio.get_running_loop()
        initial = 3  # RFC 4861 MAX_INITIAL_RTR_ADVERTISEMENTS, sent fast: nobody else routes here
        last_sent = -1e9
        while True:
            solicited = self._pending[:1]
            self._pending.clear()
            gap = loop.time() - last_sent
            if gap < self.min_gap:
                await asyncio.sleep(self.min_gap - gap)
            if self._send(solicited[0] if solicited else None):
                last_sent = loop.time()
                initial -= 1
            wait = 0.5 if initial > 0 else self.interval
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _send(self, solicited_by: str | None) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(self._packet, (_ALL_NODES, 0, 0, socket.if_nametoindex(self.interface)))
        except OSError as exc:
            # Typically EADDRNOTAVAIL until the link-local address has passed DAD: retried shortly.
            self.stats["errors"] += 1
            log.debug("ra: send on %s failed: %s", self.interface, exc)
            return False
        self.stats["sent"] += 1
        if self._on_event is not None:
            try:
                self._on_event(RaEvent(self.interface, solicited_by, None if self.prefix is None else str(self.prefix)))
            except Exception:
                log.exception("ra: on_event callback failed")
        return True


def _mac_of(interface: str) -> bytes | None:
    try:
        text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
        return bytes.fromhex(text.replace(":", ""))
    except (OSError, ValueError):
        return None
