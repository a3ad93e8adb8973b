"""Authoritative DHCPv4 server for network boot (RFC 2131 server behaviour, one subnet).

``decide`` is the whole protocol: a request, the lease store, the config and the time go in, a reply (or
silence) and an outcome come out, so every RFC 2131 case is unit-tested without sockets. ``DhcpServer``
only moves datagrams. Boot-file selection is a callback (``boot_file_for``) so the PXE work plugs in later.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, cast

from bramble.boot.leases import LeaseStore, Pool, Reservation, normalise_mac
from bramble.proto.dhcp import (
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    OPT_BOOTFILE_NAME,
    OPT_BROADCAST,
    OPT_DNS_SERVERS,
    OPT_DOMAIN_NAME,
    OPT_HOSTNAME,
    OPT_LEASE_TIME,
    OPT_MESSAGE_TYPE,
    OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    OPT_TFTP_SERVER_NAME,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    decode,
    encode,
    option_ip,
    option_ips,
    option_str,
    option_u32,
    pxe_reply_options,
    reply_to,
)

__all__ = [
    "BootFileHook",
    "Decision",
    "DhcpConfig",
    "DhcpEvent",
    "DhcpServer",
    "Outcome",
    "decide",
    "destination",
    "handle",
]

log = logging.getLogger(__name__)

Outcome = Literal["offered", "acked", "nacked", "declined", "released", "informed", "exhausted", "ignored", "unsent"]
BootFileHook = Callable[[DhcpPacket], tuple[IPv4Address, str] | None]
_ZERO = IPv4Address(0)
_BROADCAST = IPv4Address("255.255.255.255")
_MIN_LEASE = 60
_MESSAGE_NAMES = {
    DHCPDISCOVER: "DISCOVER",
    DHCPOFFER: "OFFER",
    DHCPREQUEST: "REQUEST",
    DHCPDECLINE: "DECLINE",
    DHCPACK: "ACK",
    DHCPNAK: "NAK",
    DHCPRELEASE: "RELEASE",
    DHCPINFORM: "INFORM",
}
# Sent even when the client's parameter request list does not ask: clients that omit them misconfigure.
_DEFAULT_OPTIONS = (OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS_SERVERS, OPT_HOSTNAME)
# Never dropped to make a reply fit the client's size limit.
_ESSENTIAL = frozenset(
    {OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_LEASE_TIME, OPT_RENEWAL_TIME, OPT_REBINDING_TIME, OPT_SUBNET_MASK, 82}
)


@dataclass(frozen=True)
class DhcpConfig:
    """One subnet served authoritatively. ``server_ip`` may lie outside ``subnet`` when clients are relayed."""

    server_ip: IPv4Address
    subnet: IPv4Network
    range_start: IPv4Address
    range_end: IPv4Address
    router: IPv4Address | None = None
    dns: Sequence[IPv4Address] = ()
    domain: str | None = None
    lease_seconds: int = 3600
    quarantine_seconds: float = 600.0
    decline_seconds: float = 3600.0
    offer_seconds: float = 30.0
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    boot_file_for: BootFileHook | None = None

    def pool(self) -> Pool:
        """The allocation view for ``LeaseStore``: our own address and the router are never leased."""
        excluded = {self.server_ip} | ({self.router} if self.router is not None else set())
        return Pool(
            subnet=self.subnet,
            range_start=self.range_start,
            range_end=self.range_end,
            excluded=frozenset(excluded),
            reservations=self.reservations,
            quarantine_seconds=self.quarantine_seconds,
            decline_seconds=self.decline_seconds,
            offer_seconds=self.offer_seconds,
        )


@dataclass(frozen=True)
class Decision:
    """What ``decide`` concluded: the reply (None for silence) and why, for the event log."""

    reply: DhcpPacket | None
    outcome: Outcome
    yiaddr: IPv4Address | None = None
    reason: str = ""


@dataclass(frozen=True)
class DhcpEvent:
    """One exchange, small enough to become an audit event later."""

    mac: str
    message_type: str
    outcome: Outcome
    yiaddr: str | None
    client: tuple[str, int]
    giaddr: str | None
    xid: int
    reason: str = ""


def handle(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> DhcpPacket | None:
    """The reply to send for ``request``, or None to stay silent."""
    return decide(request, store, config, now).reply


def decide(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> Decision:
    """RFC 2131 section 4.3 server behaviour; may raise ``DhcpDecodeError`` for malformed options."""
    if request.op != BOOTREQUEST or request.htype != 1 or request.hlen != 6:
        return Decision(None, "ignored", reason="not an Ethernet BOOTREQUEST")
    mtype = request.message_type
    if mtype is None:
        return Decision(None, "ignored", reason="plain BOOTP is not served")
    if request.giaddr != _ZERO and request.giaddr not in config.subnet:
        return Decision(None, "ignored", reason=f"relay {request.giaddr} is not in {config.subnet}")
    if mtype == DHCPDISCOVER:
        return _discover(request, store, config, now)
    if mtype == DHCPREQUEST:
        return _request(request, store, config, now)
    if mtype == DHCPDECLINE:
        return _decline(request, store, config, now)
    if mtype == DHCPRELEASE:
        return _release(request, store, config, now)
    if mtype == DHCPINFORM:
        reply = _reply(request, config, DHCPACK, None, None, now)
        return Decision(reply, "informed")
    return Decision(None, "ignored", reason=f"message type {mtype} is not a client message")


def destination(
    request: DhcpPacket, reply: DhcpPacket, *, server_port: int = 67, client_port: int = 68
) -> tuple[str, int]:
    """RFC 2131 4.1 reply addressing, without ARP injection: unconfigured clients get a broadcast."""
    if request.giaddr != _ZERO:
        return str(request.giaddr), server_port
    if reply.message_type == DHCPNAK:
        return str(_BROADCAST), client_port
    if request.ciaddr != _ZERO:
        return str(request.ciaddr), client_port
    return str(_BROADCAST), client_port


# -- message handlers -------------------------------------------------------------------------


def _discover(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> Decision:
    lease = store.offer(
        request.mac,
        requested=_requested(request),
        client_id=request.client_id,
        hostname=request.hostname,
        now=now,
    )
    if lease is None:
        log.warning("dhcp: pool %s-%s exhausted, no offer for %s", config.range_start, config.range_end, request.mac)
        return Decision(None, "exhausted", reason="no free address")
    reply = _reply(request, config, DHCPOFFER, lease.ip, _lease_seconds(request, config), now)
    return Decision(reply, "offered", lease.ip)


def _request(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> Decision:
    server_id, requested = request.server_id, _requested(request)
    if server_id is not None:  # SELECTING
        if server_id != config.server_ip:
            store.cancel_offer(request.mac, now)
            return Decision(None, "ignored", reason=f"client selected server {server_id}")
        if requested is None or request.ciaddr != _ZERO:
            return _nak(request, config, "SELECTING request without a requested address", now)
        return _bind(request, store, config, requested, now)
    if requested is not None and request.ciaddr == _ZERO:  # INIT-REBOOT (RFC 2131 4.3.2)
        if not _on_link(request, requested, config):
            return _nak(request, config, f"{requested} is not on this network", now)
        known = store.lease_of(request.mac, now)
        holder = store.get(requested)
        if known is None and (holder is None or holder.mac == normalise_mac(request.mac)):
            return Decision(None, "ignored", reason="INIT-REBOOT from a client we have no record of")
        if known is None or known.ip != requested:
            return _nak(request, config, f"{requested} is not this client's address", now)
        return _bind(request, store, config, requested, now)
    if request.ciaddr != _ZERO:  # RENEWING (unicast) or REBINDING (broadcast)
        if not _on_link(request, request.ciaddr, config):
            return _nak(request, config, f"{request.ciaddr} is not on this network", now)
        holder = store.get(request.ciaddr)
        if holder is not None and holder.mac != normalise_mac(request.mac) and holder.active(now):
            return _nak(request, config, f"{request.ciaddr} belongs to another client", now)
        return _bind(request, store, config, request.ciaddr, now)
    return Decision(None, "ignored", reason="REQUEST with neither server id, requested address nor ciaddr")


def _bind(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, ip: IPv4Address, now: float) -> Decision:
    seconds = _lease_seconds(request, config)
    lease = store.bind(request.mac, ip, seconds, client_id=request.client_id, hostname=request.hostname, now=now)
    if lease is None:
        return _nak(request, config, f"{ip} is not available to {request.mac}", now)
    return Decision(_reply(request, config, DHCPACK, lease.ip, seconds, now), "acked", lease.ip)


def _decline(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> Decision:
    if request.server_id not in (None, config.server_ip):
        return Decision(None, "ignored", reason="DECLINE for another server")
    ip = _requested(request)
    if ip is None or not store.decline(request.mac, ip, now):
        return Decision(None, "ignored", reason=f"DECLINE for {ip} which {request.mac} does not hold")
    log.warning("dhcp: %s declined %s: another host uses it; held for %ss", request.mac, ip, config.decline_seconds)
    return Decision(None, "declined", ip)


def _release(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> Decision:
    if request.server_id not in (None, config.server_ip):
        return Decision(None, "ignored", reason="RELEASE for another server")
    if not store.release(request.mac, request.ciaddr, now):
        return Decision(None, "ignored", reason=f"RELEASE for {request.ciaddr} which {request.mac} does not hold")
    return Decision(None, "released", request.ciaddr)


def _nak(request: DhcpPacket, config: DhcpConfig, reason: str, now: float) -> Decision:
    reply = reply_to(request, DHCPNAK, server_id=config.server_ip, options={56: option_str(reason[:200])})
    if request.giaddr != _ZERO:
        reply.broadcast = True  # RFC 2131 4.3.2: the relay must broadcast a NAK to the client
    return Decision(reply, "nacked", reason=reason)


# -- reply building ---------------------------------------------------------------------------


def _requested(request: DhcpPacket) -> IPv4Address | None:
    return request.requested_ip


def _on_link(request: DhcpPacket, ip: IPv4Address, config: DhcpConfig) -> bool:
    return ip in config.subnet


def _lease_seconds(request: DhcpPacket, config: DhcpConfig) -> int:
    """A client may ask for a shorter lease (option 51), never a longer one, nor one under a minute."""
    raw = request.options.get(OPT_LEASE_TIME)
    if raw is not None and len(raw) == 4:
        return max(min(int.from_bytes(raw, "big"), config.lease_seconds), min(_MIN_LEASE, config.lease_seconds))
    return config.lease_seconds


def _reply(
    request: DhcpPacket,
    config: DhcpConfig,
    mtype: int,
    yiaddr: IPv4Address | None,
    lease_seconds: int | None,
    now: float,
) -> DhcpPacket:
    available = _available_options(request, config)
    prl = request.param_request_list
    order = [code for code in (prl or ()) if code in available]
    order += [code for code in _DEFAULT_OPTIONS if code in available and code not in order]
    options: dict[int, bytes] = {}
    if lease_seconds is not None:  # not for INFORM: RFC 2131 4.3.5
        options[OPT_LEASE_TIME] = option_u32(lease_seconds)
        options[OPT_RENEWAL_TIME] = option_u32(lease_seconds // 2)
        options[OPT_REBINDING_TIME] = option_u32(lease_seconds * 7 // 8)
    for code in order:
        options[code] = available[code]
    reply = reply_to(request, mtype, yiaddr, config.server_ip, options)
    if config.boot_file_for is not None and mtype != DHCPNAK:
        boot = config.boot_file_for(request)
        if boot is not None:
            next_server, filename = boot
            reply.siaddr = IPv4Address(next_server)
            reply.boot_file = filename
            wanted = set(prl or ())
            if OPT_TFTP_SERVER_NAME in wanted:
                reply.options[OPT_TFTP_SERVER_NAME] = option_str(str(next_server))
            if OPT_BOOTFILE_NAME in wanted:
                reply.options[OPT_BOOTFILE_NAME] = option_str(filename) + b"\0"  # NUL: some ROMs need it
            vendor = request.vendor_class or ""
            user = request.user_class or ()
            if vendor.startswith("PXEClient"):
                reply.options.update(pxe_reply_options(ipxe="iPXE" in user))
            elif "iPXE" in user:
                reply.options[175] = pxe_reply_options(ipxe=True)[175]
            relay = reply.options.pop(82, None)
            if relay is not None:
                reply.options[82] = relay  # RFC 3046: keep option 82 last
    return _fit(reply)


def _available_options(request: DhcpPacket, config: DhcpConfig) -> dict[int, bytes]:
    available: dict[int, bytes] = {OPT_SUBNET_MASK: option_ip(config.subnet.netmask)}
    if config.router is not None:
        available[OPT_ROUTER] = option_ip(config.router)
    if config.dns:
        available[OPT_DNS_SERVERS] = option_ips(config.dns)
    if config.domain:
        available[OPT_DOMAIN_NAME] = option_str(config.domain)
    available[OPT_BROADCAST] = option_ip(config.subnet.broadcast_address)
    try:
        res = config.reservations.get(normalise_mac(request.mac))
    except ValueError:
        res = None
    if res is not None and res.hostname:
        available[OPT_HOSTNAME] = option_str(res.hostname)
    return available


def _fit(reply: DhcpPacket) -> DhcpPacket:
    """Drop optional options from the end until the reply fits the client's option 57 (or 576)."""
    while True:
        try:
            encode(reply)
            return reply
        except DhcpEncodeError:
            optional = [code for code in reply.options if code not in _ESSENTIAL]
            if not optional:
                raise
            dropped = optional[-1]
            del reply.options[dropped]
            log.debug("dhcp: dropped option %d to fit the client's size limit", dropped)


# -- the server -------------------------------------------------------------------------------


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DhcpServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dhcp socket error: %s", exc)


class DhcpServer:
    """UDP transport for ``decide``. Binding to ``interface`` (root) keeps broadcasts on that link only."""

    def __init__(
        self,
        config: DhcpConfig,
        store: LeaseStore,
        *,
        interface: str | None,
        host: str = "0.0.0.0",
        port: int = 67,
        client_port: int = 68,
        relay_port: int = 67,
        on_event: Callable[[DhcpEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.store, self.interface = config, store, interface
        self.host, self._port, self.client_port, self.relay_port = host, port, client_port, relay_port
        self._on_event, self._clock = on_event, clock
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "malformed", "replies", "offers", "acks", "naks", "ignored", "errors"), 0
        )
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def port(self) -> int:
        if self._transport is None:
            return self._port
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if self.interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0")
            sock.bind((self.host, self._port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = cast(asyncio.DatagramTransport, transport)
        log.info("dhcp: serving %s on %s:%d (interface %s)", self.config.subnet, self.host, self.port, self.interface)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.stats["received"] += 1
        try:
            request = decode(data)
            decision = decide(request, self.store, self.config, self._clock())
        except DhcpDecodeError as exc:
            self.stats["malformed"] += 1
            log.debug("dhcp: malformed datagram from %s: %s", addr, exc.reason)
            return
        except Exception:  # never let one packet (or a broken boot-file hook) stop the server
            self.stats["errors"] += 1
            log.exception("dhcp: failed to handle a datagram from %s", addr)
            return
        outcome = decision.outcome
        if decision.reply is None:
            if outcome == "ignored":
                self.stats["ignored"] += 1
        else:
            outcome = self._send(request, decision.reply) or outcome
        try:
            mtype = _MESSAGE_NAMES.get(request.message_type or 0, "BOOTP")
        except DhcpDecodeError:
            mtype = "?"
        event = DhcpEvent(
            mac=request.mac,
            message_type=mtype,
            outcome=outcome,
            yiaddr=None if decision.yiaddr is None else str(decision.yiaddr),
            client=(addr[0], addr[1]),
            giaddr=None if request.giaddr == _ZERO else str(request.giaddr),
            xid=request.xid,
            reason=decision.reason,
        )
        log.debug("dhcp: %s", event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("dhcp: on_event callback failed")

    def _send(self, request: DhcpPacket, reply: DhcpPacket) -> Outcome | None:
        """Encode and send; returns "unsent" when that failed (the exchange still gets an event)."""
        target = destination(request, reply, server_port=self.relay_port, client_port=self.client_port)
        try:
            data = encode(reply)
            if self._transport is None:
                raise OSError("server is closed")
            self._transport.sendto(data, target)
        except (DhcpEncodeError, OSError) as exc:
            self.stats["errors"] += 1
            log.warning("dhcp: cannot send %s to %s: %s", _MESSAGE_NAMES.get(reply.message_type or 0), target, exc)
            return "unsent"
        self.stats["replies"] += 1
        key = {DHCPOFFER: "offers", DHCPACK: "acks", DHCPNAK: "naks"}.get(reply.message_type or 0)
        if key is not None:
            self.stats[key] += 1
        return None
