"""DHCPv4 for network boot: an authoritative server (RFC 2131, one subnet) and a PXE proxy.

``decide`` is the whole authoritative protocol: a request, the lease store, the config and the time go
in, a reply (or silence) and an outcome come out, so every RFC 2131 case is unit-tested without sockets.
``decide_proxy`` is the same for proxy-DHCP: beside someone else's DHCP server, PXE clients get only the
boot answer (yiaddr 0) on port 67 and on the PXE boot-server port 4011. The boot file itself is chosen by
a ``BootChooser`` (``bramble.boot.pxe.PxePolicy.choose``). The server classes only move datagrams.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import functools
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from bramble.boot.leases import LeaseStore, Pool, Reservation, normalise_mac
from bramble.boot.pxe import BootAnswer, PxeClient, PxePolicy
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
    OPT_CLIENT_UUID,
    OPT_DNS_SERVERS,
    OPT_DOMAIN_NAME,
    OPT_HOSTNAME,
    OPT_IPXE_ENCAP,
    OPT_LEASE_TIME,
    OPT_MESSAGE_TYPE,
    OPT_PARAM_REQUEST_LIST,
    OPT_REBINDING_TIME,
    OPT_RELAY_AGENT_INFO,
    OPT_RENEWAL_TIME,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    OPT_TFTP_SERVER_NAME,
    OPT_VENDOR_CLASS,
    OPT_VENDOR_SPECIFIC,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    decode,
    encode,
    encode_options,
    option_ip,
    option_ips,
    option_str,
    option_u32,
    pxe_vendor_option,
    reply_to,
)

if TYPE_CHECKING:
    from bramble.config import BootInterfaceSettings

__all__ = [
    "BOOT_SERVER_PORT",
    "BootChooser",
    "Decision",
    "DhcpConfig",
    "DhcpEvent",
    "DhcpServer",
    "Outcome",
    "ProxyDhcpServer",
    "build_server",
    "decide",
    "decide_proxy",
    "destination",
    "handle",
    "interface_address",
]

log = logging.getLogger(__name__)

BOOT_SERVER_PORT = 4011  # PXE 2.1: boot-server discovery and ProxyDHCP REQUESTs
Outcome = Literal[
    "offered", "acked", "nacked", "declined", "released", "informed", "exhausted", "ignored", "unsent", "malformed"
]
Mode = Literal["authoritative", "proxy"]
_ZERO = IPv4Address(0)
_ZERO_BYTES = bytes(4)
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
# Overload control. Under overload a FIFO socket queue collapses the ACK rate: new DISCOVERs crowd out the
# REQUESTs for offers already made, so the work spent on those offers is wasted and fewer DORAs finish the
# more clients arrive. So each wake-up drains the socket (reading costs a few microseconds, answering a
# hundred), answers everything but DISCOVERs at once, and queues DISCOVERs, answered a batch per loop turn;
# a DISCOVER that waited longer than ``_STALE_DISCOVER`` is shed (counted), since its client will have
# retried. Without overload the queue is empty by the end of the same wake-up.
_DRAIN_LIMIT = 512  # datagrams read per wake-up of the event loop
_DISCOVER_BATCH = 32  # queued DISCOVERs answered per loop turn
_STALE_DISCOVER = 0.5  # seconds
_BACKLOG_LIMIT = 8192  # queued DISCOVERs; the oldest are shed beyond it
_RECEIVE_BUFFER = 1 << 20  # bytes of queued datagrams the kernel keeps for us
_SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; Python 3.11's socket module does not name it
_DISCOVER_PREFIX = b"\x35\x01\x01"  # option 53 = DISCOVER as the first option (what clients send)
_BROADCAST_STR = "255.255.255.255"
_REPLY_COUNTER = {DHCPOFFER: "offers", DHCPACK: "acks", DHCPNAK: "naks"}
_MESSAGE_TYPE_BYTES = {mtype: bytes((mtype,)) for mtype in range(1, 19)}
_PXE_SUB_BOOT_ITEM = 71  # PXE 2.1 option 43 sub-option: boot server type and layer (4011 exchange)


# Picks the boot answer for a network-booting client (``PxeClient.is_pxe``; others are not asked):
# ``PxePolicy(...).choose``, or the boot role's wrapper around it.
BootChooser = Callable[[PxeClient], BootAnswer | None]


@dataclass(frozen=True)
class DhcpConfig:
    """One subnet served authoritatively. ``server_ip`` may lie outside ``subnet`` when clients are relayed.

    Without ``range_start``/``range_end`` only reserved MACs get addresses (VM networks whose addresses
    IPAM decides); everyone else is ignored.
    """

    server_ip: IPv4Address
    subnet: IPv4Network
    range_start: IPv4Address | None = None
    range_end: IPv4Address | None = None
    router: IPv4Address | None = None
    dns: Sequence[IPv4Address] = ()
    domain: str | None = None
    lease_seconds: int = 3600
    quarantine_seconds: float = 600.0
    decline_seconds: float = 3600.0
    offer_seconds: float = 30.0
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    boot_file_for: BootChooser | None = None
    # Derived once, used per packet: option values that never change, and the subnet as integers.
    _options: Mapping[int, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)
    _net: tuple[int, int] = field(default=(0, 0), init=False, repr=False, compare=False)
    # Reply option blocks by (the client's option 55, lease seconds), and their encoding: see _reply.
    _blocks: dict[tuple[bytes, int | None], tuple[dict[int, bytes], bytes]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _server_id_option: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        options: dict[int, bytes] = {OPT_SUBNET_MASK: option_ip(self.subnet.netmask)}
        if self.router is not None:
            options[OPT_ROUTER] = option_ip(self.router)
        if self.dns:
            options[OPT_DNS_SERVERS] = option_ips(self.dns)
        if self.domain:
            options[OPT_DOMAIN_NAME] = option_str(self.domain)
        options[OPT_BROADCAST] = option_ip(self.subnet.broadcast_address)
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_net", (int(self.subnet.network_address), int(self.subnet.netmask)))
        object.__setattr__(self, "_server_id_option", bytes((OPT_SERVER_ID, 4)) + self.server_ip.packed)

    def on_link(self, ip: IPv4Address) -> bool:
        network, mask = self._net
        return int(ip) & mask == network

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


@dataclass(slots=True)
class Decision:
    """What ``decide`` concluded: the reply (None for silence), why, and what the client was given.

    ``wire`` is the encoded reply (encoding once is part of the per-packet budget).
    """

    reply: DhcpPacket | None
    outcome: Outcome
    yiaddr: IPv4Address | None = None
    reason: str = ""
    boot_file: str | None = None
    wire: bytes | None = field(default=None, repr=False, compare=False)
    # The reply's options area, encoded, while they are exactly what _reply built (see decide).
    options_wire: bytes | None = field(default=None, repr=False, compare=False)


class DhcpEvent(NamedTuple):
    """One exchange, with what users ask about later (the boot role turns it into an audit event).

    A named tuple: the server builds one per packet (``_datagram`` makes it straight from a tuple), and
    the audit writer may hold thousands of them through a boot storm (about 200 bytes each).
    """

    mac: str
    message_type: str
    outcome: Outcome
    yiaddr: str | None
    client: tuple[str, int]
    giaddr: str | None
    xid: int
    reason: str = ""
    interface: str | None = None
    mode: Mode = "authoritative"
    port: int = 67  # the server port it arrived on: 67, or 4011 for a PXE boot-server request
    arch: str | None = None  # bramble.boot.pxe.arch_name of option 93
    vendor_class: str | None = None
    user_class: tuple[str, ...] = ()
    ipxe: bool = False
    boot_file: str | None = None
    hostname: str | None = None


# DhcpEvent from a tuple of all its fields in order, without the generated __new__'s argument parsing.
_new_event: Callable[[tuple[Any, ...]], DhcpEvent] = functools.partial(tuple.__new__, DhcpEvent)


def handle(request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float) -> DhcpPacket | None:
    """The reply to send for ``request``, or None to stay silent."""
    return decide(request, store, config, now).reply


def decide(
    request: DhcpPacket, store: LeaseStore, config: DhcpConfig, now: float, client: PxeClient | None = None
) -> Decision:
    """RFC 2131 section 4.3 server behaviour; may raise ``DhcpDecodeError`` for malformed options."""
    if request.op != BOOTREQUEST or request.htype != 1 or request.hlen != 6:
        return Decision(None, "ignored", reason="not an Ethernet BOOTREQUEST")
    mtype = request.message_type
    if mtype is None:
        return Decision(None, "ignored", reason="plain BOOTP is not served")
    if request.giaddr != _ZERO and not config.on_link(request.giaddr):
        return Decision(None, "ignored", reason=f"relay {request.giaddr} is not in {config.subnet}")
    if mtype == DHCPDISCOVER:
        decision = _discover(request, store, config, now)
    elif mtype == DHCPREQUEST:
        decision = _request(request, store, config, now)
    elif mtype == DHCPDECLINE:
        return _decline(request, store, config, now)
    elif mtype == DHCPRELEASE:
        return _release(request, store, config, now)
    elif mtype == DHCPINFORM:
        informed, options_wire = _reply(request, config, DHCPACK, None, None)
        decision = Decision(informed, "informed", options_wire=options_wire)
    else:
        return Decision(None, "ignored", reason=f"message type {mtype} is not a client message")
    reply = decision.reply
    if reply is None or decision.outcome == "nacked":
        decision.wire = None if reply is None else _fit(reply)
        return decision
    if config.boot_file_for is not None:
        client = client or PxeClient.from_request(request)
        # Only a network-booting client can get a boot answer (PxePolicy.choose says None to the rest),
        # and most DHCP clients are not booting: the chooser, which looks the machine up, is not asked.
        answer = config.boot_file_for(client) if client.is_pxe else None
        if answer is not None:
            _add_boot(request, reply, answer, proxy=False)
            decision.boot_file = answer.file
            decision.options_wire = None  # the options changed
    if decision.options_wire is not None:
        try:
            decision.wire = encode(reply, encoded_options=decision.options_wire)
            return decision
        except DhcpEncodeError:
            pass  # over the client's size limit: _fit drops options until it fits
    decision.wire = _fit(reply)
    return decision


def decide_proxy(
    request: DhcpPacket,
    choose: BootChooser,
    server_ip: IPv4Address,
    *,
    boot_server: bool,
    client: PxeClient | None = None,
) -> Decision:
    """Proxy-DHCP (PXE 2.1): never an address, only the boot answer, and only to ``PXEClient`` ROMs.

    On port 67 (``boot_server=False``) a DISCOVER gets an OFFER with yiaddr 0; on port 4011 a REQUEST (or
    INFORM) gets an ACK. Both carry siaddr, the file, option 54, ``PXEClient`` in 60 and option 43 (OVMF
    rejects a ``PXEClient`` answer without 43), and echo the client's UUID (97) as the ROMs expect.
    """
    if request.op != BOOTREQUEST or request.htype != 1 or request.hlen != 6:
        return Decision(None, "ignored", reason="not an Ethernet BOOTREQUEST")
    mtype = request.message_type
    client = client or PxeClient.from_request(request)
    if not client.is_pxe_vendor:
        return Decision(None, "ignored", reason="not a PXEClient")
    if boot_server:
        if mtype not in (DHCPREQUEST, DHCPINFORM):
            return Decision(None, "ignored", reason=f"message type {mtype} on the boot-server port")
        reply_type = DHCPACK
    else:
        if mtype != DHCPDISCOVER:
            return Decision(None, "ignored", reason="proxy-DHCP answers only DISCOVER on port 67")
        reply_type = DHCPOFFER
    answer = choose(client)
    if answer is None:
        return Decision(None, "ignored", reason=f"no boot file for arch {client.arch_name}")
    reply = reply_to(request, reply_type, None, server_ip)
    reply.ciaddr = _ZERO
    _add_boot(request, reply, answer, proxy=True)
    if boot_server:
        item = _boot_item(request)
        if item is not None:
            # Boot-server discovery: the ACK names the item it answers, or the ROM discards it.
            reply.options[OPT_VENDOR_SPECIFIC] = bytes((_PXE_SUB_BOOT_ITEM, len(item))) + item + b"\xff"
    uuid = request.options.get(OPT_CLIENT_UUID)
    if uuid is not None:
        reply.options[OPT_CLIENT_UUID] = uuid
    outcome: Outcome = "acked" if boot_server else "offered"
    return Decision(reply, outcome, reason="proxy", boot_file=answer.file, wire=_fit(reply))


def _boot_item(request: DhcpPacket) -> bytes | None:
    """Sub-option 71 (type, layer) of the request's option 43, if it has one."""
    raw = request.options.get(OPT_VENDOR_SPECIFIC)
    i = 0
    while raw is not None and i + 1 < len(raw):
        code, length = raw[i], raw[i + 1]
        if code == 255:
            break
        if code == _PXE_SUB_BOOT_ITEM and length == 4 and i + 2 + length <= len(raw):
            return raw[i + 2 : i + 6]
        i += 2 + length
    return None


def _add_boot(request: DhcpPacket, reply: DhcpPacket, answer: BootAnswer, *, proxy: bool) -> None:
    """siaddr, ``file``, 66/67 when asked for, and the PXE/iPXE options the client class needs."""
    reply.siaddr = answer.next_server
    reply.boot_file = answer.file
    wanted = request.options.get(55, b"")
    if OPT_TFTP_SERVER_NAME in wanted:
        reply.options[OPT_TFTP_SERVER_NAME] = option_str(str(answer.next_server))
    if OPT_BOOTFILE_NAME in wanted:
        reply.options[OPT_BOOTFILE_NAME] = option_str(answer.file) + b"\0"  # NUL: some ROMs need it
    vendor = request.options.get(OPT_VENDOR_CLASS, b"")
    extra = dict(answer.options)
    if vendor.startswith(b"PXEClient"):
        # 60 without 43 makes OVMF reject the offer (PXE-E16); 43 sub-option 6 bit 3: the file is here,
        # skip boot-server discovery and menus.
        reply.options[OPT_VENDOR_CLASS] = b"PXEClient"
        reply.options[OPT_VENDOR_SPECIFIC] = pxe_vendor_option()
    if proxy:
        extra.pop(OPT_IPXE_ENCAP, None)  # "do not wait for ProxyDHCP" makes no sense coming from the proxy
    reply.options.update(extra)
    relay = reply.options.pop(82, None)
    if relay is not None:
        reply.options[82] = relay  # RFC 3046: keep option 82 last


def destination(
    request: DhcpPacket, reply: DhcpPacket, *, server_port: int = 67, client_port: int = 68
) -> tuple[str, int]:
    """RFC 2131 4.1 reply addressing, without ARP injection: unconfigured clients get a broadcast."""
    if request.giaddr != _ZERO:
        return _dotted(request.giaddr), server_port
    if reply.message_type == DHCPNAK:
        return _BROADCAST_STR, client_port
    if request.ciaddr != _ZERO:
        return _dotted(request.ciaddr), client_port
    return _BROADCAST_STR, client_port


def _dotted(ip: IPv4Address) -> str:
    """``str(ip)`` at a quarter of the cost (ipaddress formats in Python; this is C): once per packet."""
    return socket.inet_ntoa(int(ip).to_bytes(4, "big"))


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
        if config.range_start is None and normalise_mac(request.mac) not in config.reservations:
            return Decision(None, "ignored", reason="no reservation for this client")
        log.warning("dhcp: pool %s-%s exhausted, no offer for %s", config.range_start, config.range_end, request.mac)
        return Decision(None, "exhausted", reason="no free address")
    reply, options_wire = _reply(request, config, DHCPOFFER, lease.ip, _lease_seconds(request, config))
    return Decision(reply, "offered", lease.ip, options_wire=options_wire)


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
    reply, options_wire = _reply(request, config, DHCPACK, lease.ip, seconds)
    return Decision(reply, "acked", lease.ip, options_wire=options_wire)


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
    return config.on_link(ip)


def _lease_seconds(request: DhcpPacket, config: DhcpConfig) -> int:
    """A client may ask for a shorter lease (option 51), never a longer one, nor one under a minute."""
    raw = request.options.get(OPT_LEASE_TIME)
    if raw is not None and len(raw) == 4:
        return max(min(int.from_bytes(raw, "big"), config.lease_seconds), min(_MIN_LEASE, config.lease_seconds))
    return config.lease_seconds


def _reply(
    request: DhcpPacket, config: DhcpConfig, mtype: int, yiaddr: IPv4Address | None, lease_seconds: int | None
) -> tuple[DhcpPacket, bytes | None]:
    """The reply, and its options already encoded when they are the ones every such client gets."""
    available = _available_options(request, config)
    wanted = request.options.get(OPT_PARAM_REQUEST_LIST, b"")
    shared = available is config._options  # no per-client hostname: the block depends on (55, lease) only
    cached = config._blocks.get((wanted, lease_seconds)) if shared else None
    if cached is None:
        block = _option_block(available, wanted, lease_seconds)
        cached = (block, encode_options(block))
        if shared and len(config._blocks) < 256:  # clients choose 55 and 51: keep the cache bounded
            config._blocks[wanted, lease_seconds] = cached
    block, block_wire = cached
    reply = reply_to(request, mtype, yiaddr, config.server_ip, block)
    if not shared or OPT_RELAY_AGENT_INFO in request.options:
        return reply, None  # reply_to adds option 82 after the block
    return reply, b"\x35\x01" + _MESSAGE_TYPE_BYTES[mtype] + config._server_id_option + block_wire


def _option_block(available: Mapping[int, bytes], wanted: bytes, lease_seconds: int | None) -> dict[int, bytes]:
    """A reply's options after 53/54: lease times, then what the client asked for in its order, then defaults."""
    options: dict[int, bytes] = {}
    if lease_seconds is not None:  # not for INFORM: RFC 2131 4.3.5
        options[OPT_LEASE_TIME] = option_u32(lease_seconds)
        options[OPT_RENEWAL_TIME] = option_u32(lease_seconds // 2)
        options[OPT_REBINDING_TIME] = option_u32(lease_seconds * 7 // 8)
    for code in wanted:
        value = available.get(code)
        if value is not None:
            options[code] = value
    for code in _DEFAULT_OPTIONS:
        if code not in options:
            value = available.get(code)
            if value is not None:
                options[code] = value
    return options


def _available_options(request: DhcpPacket, config: DhcpConfig) -> Mapping[int, bytes]:
    if not config.reservations:
        return config._options
    try:
        res = config.reservations.get(normalise_mac(request.mac))
    except ValueError:
        res = None
    if res is None or not res.hostname:
        return config._options
    return {**config._options, OPT_HOSTNAME: option_str(res.hostname)}


def _fit(reply: DhcpPacket) -> bytes:
    """Encode, dropping optional options from the end until the reply fits the client's option 57 (or 576)."""
    while True:
        try:
            return encode(reply)
        except DhcpEncodeError:
            optional = [code for code in reply.options if code not in _ESSENTIAL]
            if not optional:
                raise
            dropped = optional[-1]
            del reply.options[dropped]
            log.debug("dhcp: dropped option %d to fit the client's size limit", dropped)


# -- the servers ------------------------------------------------------------------------------


def _udp_socket(host: str, port: int, interface: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # 1 MiB instead of the default ~200 KiB (about 40 ms of datagrams at 6,000/s): a busy host can keep
        # us off the CPU that long, and the kernel then drops REQUESTs as readily as DISCOVERs. Answers stay
        # fresh anyway: each wake-up drains the whole queue and stale DISCOVERs are shed (_DRAIN_LIMIT).
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER)  # beyond rmem_max: root
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)  # capped at rmem_max
        if interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


DecideFn = Callable[[DhcpPacket, PxeClient], Decision]
DatagramHandler = Callable[[bytes, tuple[str, int]], None]


class _Endpoint:
    """Datagram plumbing shared by both modes: decode, decide, send, count, emit one event."""

    mode: Mode = "authoritative"

    def __init__(
        self,
        *,
        interface: str | None,
        host: str,
        client_port: int,
        relay_port: int,
        on_event: Callable[[DhcpEvent], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self.interface, self.host = interface, host
        self.client_port, self.relay_port = client_port, relay_port
        self._on_event, self._clock = on_event, clock
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "malformed", "replies", "offers", "acks", "naks", "ignored", "errors", "shed"), 0
        )
        self._sockets: list[socket.socket] = []
        # Queued DISCOVERs: (read at, handler, datagram, sender); see _DRAIN_LIMIT.
        self._discovers: collections.deque[tuple[float, DatagramHandler, bytes, tuple[str, int]]] = collections.deque()
        self._discover_turn: asyncio.Handle | None = None
        self._malformed_logged_at = 0.0
        self._malformed_unlogged = 0

    async def _listen(self, port: int, handler: DatagramHandler) -> int:
        """Read with our own reader: asyncio's datagram transport takes one packet per loop iteration,
        which at thousands of packets a second spends more time in epoll than in DHCP."""
        sock = _udp_socket(self.host, port, self.interface)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain, sock, handler)
        self._sockets.append(sock)
        return int(sock.getsockname()[1])

    def _drain(self, sock: socket.socket, handler: DatagramHandler) -> None:
        queue = self._discovers
        read_at = 0.0
        for _ in range(_DRAIN_LIMIT):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors reported on the socket: not fatal
                log.debug("dhcp: receive error: %s", exc)
                break
            if data[240:243] == _DISCOVER_PREFIX:
                if not read_at:
                    read_at = time.monotonic()
                queue.append((read_at, handler, data, addr))
            else:
                handler(data, addr)  # REQUESTs first: they finish exchanges we already spent an offer on
        while len(queue) > _BACKLOG_LIMIT:
            queue.popleft()
            self.stats["shed"] += 1
        if queue and self._discover_turn is None:
            self._answer_discovers()

    def _answer_discovers(self) -> None:
        """Answer up to ``_DISCOVER_BATCH`` queued DISCOVERs, shedding stale ones; the rest next loop turn."""
        self._discover_turn = None
        queue = self._discovers
        oldest = time.monotonic() - _STALE_DISCOVER
        for _ in range(_DISCOVER_BATCH):
            if not queue:
                return
            read_at, handler, data, addr = queue.popleft()
            if read_at < oldest:
                self.stats["shed"] += 1
                continue
            handler(data, addr)
        if queue:
            self._discover_turn = asyncio.get_running_loop().call_soon(self._answer_discovers)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._discover_turn is not None:
            self._discover_turn.cancel()
            self._discover_turn = None
        self._discovers.clear()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def _malformed(self, addr: tuple[str, int], reason: str) -> None:
        """Count every bad datagram; log at most one warning a second so a flood cannot fill the disk."""
        self.stats["malformed"] += 1
        now = time.monotonic()
        if now - self._malformed_logged_at >= 1.0:
            more = f" ({self._malformed_unlogged} more since the last report)" if self._malformed_unlogged else ""
            log.warning("dhcp: dropped a malformed datagram from %s:%d: %s%s", addr[0], addr[1], reason, more)
            self._malformed_logged_at, self._malformed_unlogged = now, 0
        else:
            self._malformed_unlogged += 1

    def _datagram(
        self,
        data: bytes,
        addr: tuple[str, int],
        decide_fn: DecideFn,
        transport_index: int,
        local_port: int,
    ) -> None:
        self.stats["received"] += 1
        try:
            request = decode(data)
            client = PxeClient.from_request(request)
            decision = decide_fn(request, client)
        except DhcpDecodeError as exc:
            self._malformed(addr, exc.reason)
            return
        except Exception:  # never let one packet (or a broken boot policy) stop the server
            self.stats["errors"] += 1
            log.exception("dhcp: failed to handle a datagram from %s", addr)
            return
        outcome = decision.outcome
        if decision.reply is None:
            if outcome == "ignored":
                self.stats["ignored"] += 1
        else:
            target = self._target(request, decision.reply, addr, local_port)
            outcome = self._send(decision, target, transport_index) or outcome
        if self._on_event is None and not log.isEnabledFor(logging.DEBUG):
            return
        raw_type = request.options.get(OPT_MESSAGE_TYPE)
        mtype = "BOOTP" if raw_type is None else _MESSAGE_NAMES.get(raw_type[0], "?") if len(raw_type) == 1 else "?"
        yiaddr = decision.yiaddr
        hostname = request.options.get(OPT_HOSTNAME)
        event = _new_event(
            (
                client.mac,
                mtype,
                outcome,
                None if yiaddr is None else _dotted(yiaddr),
                (addr[0], addr[1]),
                None if data[24:28] == _ZERO_BYTES else socket.inet_ntoa(data[24:28]),  # the request's bytes
                request.xid,
                decision.reason,
                self.interface,
                self.mode,
                local_port,
                client.arch_name,
                client.vendor_class,
                client.user_class,
                client.is_ipxe,
                decision.boot_file,
                None if hostname is None else hostname.decode("utf-8", "replace"),
            )
        )
        log.debug("dhcp: %s", event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("dhcp: on_event callback failed")

    def _target(
        self, request: DhcpPacket, reply: DhcpPacket, addr: tuple[str, int], local_port: int
    ) -> tuple[str, int]:
        return destination(request, reply, server_port=self.relay_port, client_port=self.client_port)

    def _send(self, decision: Decision, target: tuple[str, int], transport_index: int) -> Outcome | None:
        """Send the encoded reply; returns "unsent" when that failed (the exchange still gets an event)."""
        reply = decision.reply
        assert reply is not None
        try:
            data = decision.wire if decision.wire is not None else encode(reply)
            if len(self._sockets) <= transport_index:
                raise OSError("server is closed")
            self._sockets[transport_index].sendto(data, target)
        except BlockingIOError:  # the send buffer is full: drop this reply, the client retries
            self.stats["errors"] += 1
            return "unsent"
        except (DhcpEncodeError, OSError) as exc:
            self.stats["errors"] += 1
            log.warning("dhcp: cannot send %s to %s: %s", _MESSAGE_NAMES.get(reply.message_type or 0), target, exc)
            return "unsent"
        self.stats["replies"] += 1
        key = _REPLY_COUNTER.get(reply.message_type or 0)
        if key is not None:
            self.stats[key] += 1
        return None


class DhcpServer(_Endpoint):
    """Authoritative DHCPv4 on one interface. Binding to ``interface`` (root) keeps broadcasts on that link."""

    mode: Mode = "authoritative"

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
        super().__init__(
            interface=interface,
            host=host,
            client_port=client_port,
            relay_port=relay_port,
            on_event=on_event,
            clock=clock,
        )
        self.config, self.store = config, store
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._port = await self._listen(self._port, self._on_datagram)
        log.info("dhcp: serving %s on %s:%d (interface %s)", self.config.subnet, self.host, self._port, self.interface)

    async def close(self) -> None:
        """Stop serving and flush the lease journal (the server owns its store from ``start`` on)."""
        await super().close()
        self.store.close()

    def set_reservations(self, reservations: Mapping[str, Reservation]) -> None:
        """Replace the reservations at runtime (IPAM decided new addresses); takes effect at the next packet."""
        self.config = replace(self.config, reservations={normalise_mac(m): r for m, r in reservations.items()})
        self.store.set_pool(self.config.pool(), self._clock())

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self._datagram(data, addr, self._decide, 0, self._port)

    def _decide(self, request: DhcpPacket, client: PxeClient) -> Decision:
        return decide(request, self.store, self.config, self._clock(), client)


class ProxyDhcpServer(_Endpoint):
    """Proxy-DHCP beside an existing DHCP server: PXE boot answers on port 67 and 4011, never an address."""

    mode: Mode = "proxy"

    def __init__(
        self,
        server_ip: IPv4Address,
        choose: BootChooser,
        *,
        interface: str | None,
        host: str = "0.0.0.0",
        port: int = 67,
        boot_server_port: int = BOOT_SERVER_PORT,
        client_port: int = 68,
        relay_port: int = 67,
        on_event: Callable[[DhcpEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            interface=interface,
            host=host,
            client_port=client_port,
            relay_port=relay_port,
            on_event=on_event,
            clock=clock,
        )
        self.server_ip, self.choose = IPv4Address(server_ip), choose
        self._port, self._boot_server_port = port, boot_server_port

    @property
    def port(self) -> int:
        return self._port

    @property
    def boot_server_port(self) -> int:
        return self._boot_server_port

    async def start(self) -> None:
        self._port = await self._listen(self._port, self._on_dhcp)
        try:
            self._boot_server_port = await self._listen(self._boot_server_port, self._on_boot_server)
        except BaseException:
            await self.close()
            raise
        log.info(
            "dhcp: proxy-DHCP for PXE clients on %s ports %d and %d (interface %s), boot server %s",
            self.host,
            self._port,
            self._boot_server_port,
            self.interface,
            self.server_ip,
        )

    def _on_dhcp(self, data: bytes, addr: tuple[str, int]) -> None:
        self._datagram(data, addr, self._decide_offer, 0, self._port)

    def _on_boot_server(self, data: bytes, addr: tuple[str, int]) -> None:
        self._datagram(data, addr, self._decide_ack, 1, self._boot_server_port)

    def _decide_offer(self, request: DhcpPacket, client: PxeClient) -> Decision:
        return decide_proxy(request, self.choose, self.server_ip, boot_server=False, client=client)

    def _decide_ack(self, request: DhcpPacket, client: PxeClient) -> Decision:
        return decide_proxy(request, self.choose, self.server_ip, boot_server=True, client=client)

    def _target(
        self, request: DhcpPacket, reply: DhcpPacket, addr: tuple[str, int], local_port: int
    ) -> tuple[str, int]:
        if local_port == self._boot_server_port and addr[0] != "0.0.0.0":
            return addr  # the 4011 request is unicast from a configured client: answer where it came from
        return destination(request, reply, server_port=self.relay_port, client_port=self.client_port)


# -- building a server from the daemon's settings ---------------------------------------------

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def interface_address(name: str) -> IPv4Interface:
    """The first IPv4 address (with prefix) of ``name``; ``ValueError`` naming the interface otherwise."""
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            addr = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24]
            mask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24]
        except OSError as exc:
            raise ValueError(f"interface {name} has no IPv4 address: {exc.strerror}") from None
    return IPv4Interface(f"{IPv4Address(addr)}/{IPv4Address(mask)}")


def build_server(
    settings: BootInterfaceSettings,
    *,
    choose: BootChooser | None,
    lease_path: Path | None,
    quarantine_seconds: float = 600.0,
    port: int = 67,
    boot_server_port: int = BOOT_SERVER_PORT,
    on_event: Callable[[DhcpEvent], None] | None = None,
) -> DhcpServer | ProxyDhcpServer:
    """The DHCP server for one ``[[boot.interfaces]]`` entry; call ``await server.start()`` / ``close()``.

    ``server_ip`` and ``subnet`` default to the interface's own address. ``ValueError`` (with the interface
    name) for settings that cannot work, e.g. proxy mode without a boot policy.
    """
    own = None if settings.server_ip and settings.subnet else interface_address(settings.name)
    server_ip = IPv4Address(settings.server_ip) if settings.server_ip else cast(IPv4Interface, own).ip
    if settings.mode == "proxy":
        if choose is None:
            raise ValueError(f"interface {settings.name}: proxy mode needs a boot policy")
        return ProxyDhcpServer(
            server_ip, choose, interface=settings.name, port=port, boot_server_port=boot_server_port, on_event=on_event
        )
    subnet = IPv4Network(settings.subnet, strict=False) if settings.subnet else cast(IPv4Interface, own).network
    if (settings.range_start is None) != (settings.range_end is None):
        raise ValueError(f"interface {settings.name}: set both range_start and range_end, or neither")
    try:
        config = DhcpConfig(
            server_ip=server_ip,
            subnet=subnet,
            range_start=IPv4Address(settings.range_start) if settings.range_start else None,
            range_end=IPv4Address(settings.range_end) if settings.range_end else None,
            router=IPv4Address(settings.router) if settings.router else None,
            dns=tuple(IPv4Address(d) for d in settings.dns),
            domain=settings.domain,
            lease_seconds=settings.lease_seconds,
            quarantine_seconds=quarantine_seconds,
            boot_file_for=choose,
        )
        store = LeaseStore(lease_path, config.pool())
    except ValueError as exc:
        raise ValueError(f"interface {settings.name}: {exc}") from None
    return DhcpServer(config, store, interface=settings.name, port=port, on_event=on_event)


def default_policy(server_ip: IPv4Address, http_port: int) -> PxePolicy:
    """The stock PXE policy for a server address: loaders from TFTP, scripts from our HTTP port."""
    return PxePolicy(tftp_server=server_ip, http_base=f"http://{server_ip}:{http_port}")
