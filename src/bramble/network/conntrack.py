"""Cut the connections that the security groups no longer allow.

The firewall is stateful: ``ct state established,related accept`` comes first, so only a connection's
first packet meets the rules. Without this module, removing a rule (or a VM from a remote group) would
stop new connections but leave every open one running; an SSH session that the removed rule let in
would stay up. As OpenStack's and Proxmox's firewalls do, after every change that may have taken an
allowance away, each tracked IPv4 connection to or from a VM is checked against the rules now loaded,
and the ones they would refuse are deleted from conntrack. The next packet of such a connection is then
a new one for conntrack, meets the rules and is dropped (TCP without SYN is ``ct state invalid``).

Connections are judged as the ``forward``/``input``/``output`` chains see their first packet: after
DNAT (the reply tuple's source is the real destination), before SNAT (the original source). A VM's
address is looked up among all policies, since conntrack does not say which bridge a packet crossed;
with the same address on two networks, a connection is kept if either VM's rules allow it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from bramble.network.driver import METADATA_ADDRESS, Rule, SecurityPolicy

log = logging.getLogger(__name__)

_LOGGED_CUTS = 20  # connections named one by one in the log; the rest are counted
_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP}
_DHCP_SERVER, _DHCP_CLIENT = 67, 68


@dataclass(frozen=True)
class Flow:
    """One tracked connection as the filter chains saw its first packet."""

    source: IPv4Address
    destination: IPv4Address  # after DNAT
    protocol: int
    port: int | None  # destination port after DNAT; None for protocols without ports
    original_destination: IPv4Address  # before DNAT (the metadata service is matched on it)


def _rule_allows(
    rule: Rule, remote: IPv4Address, flow: Flow, address_sets: Mapping[str, Collection[IPv4Address]]
) -> bool:
    if rule.protocol != "any":
        if flow.protocol != _PROTOCOLS[rule.protocol]:
            return False
        if rule.port_min is not None:
            high = rule.port_max if rule.port_max is not None else rule.port_min
            if flow.port is None or not rule.port_min <= flow.port <= high:
                return False
    if rule.remote_set is not None:
        return remote in address_sets.get(rule.remote_set, ())
    return rule.cidr is None or remote in rule.cidr


def flow_allowed(
    flow: Flow,
    policies_by_ip: Mapping[IPv4Address, Sequence[SecurityPolicy]],
    address_sets: Mapping[str, Collection[IPv4Address]],
) -> bool:
    """Would the loaded rules let this connection's first packet through? (The sender's egress rules if
    it is a VM, then the receiver's ingress rules if that is a VM; DHCP and metadata always pass.)"""
    if flow.protocol == socket.IPPROTO_UDP and flow.port in (_DHCP_SERVER, _DHCP_CLIENT):
        return True
    if flow.protocol == socket.IPPROTO_TCP and flow.original_destination == METADATA_ADDRESS:
        return True
    senders = policies_by_ip.get(flow.source)
    if senders is not None and not any(
        _rule_allows(rule, flow.destination, flow, address_sets) for p in senders for rule in p.egress
    ):
        return False
    receivers = policies_by_ip.get(flow.destination)
    return receivers is None or any(
        _rule_allows(rule, flow.source, flow, address_sets) for p in receivers for rule in p.ingress
    )


def by_ip(policies: Iterable[SecurityPolicy]) -> dict[IPv4Address, list[SecurityPolicy]]:
    found: dict[IPv4Address, list[SecurityPolicy]] = {}
    for policy in policies:
        found.setdefault(policy.ip, []).append(policy)
    return found


def _flow(entry: _Entry) -> Flow:
    orig, reply = entry.orig, entry.reply
    port = reply.sport if reply.sport is not None else orig.dport
    return Flow(IPv4Address(orig.saddr), IPv4Address(reply.saddr), orig.proto, port, IPv4Address(orig.daddr))


def cut_disallowed(policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]) -> int:
    """Delete every tracked connection to or from a VM that ``policies`` refuse; how many went.

    Needs CAP_NET_ADMIN in the network namespace, like the firewall itself (OSError otherwise). An
    entry that ended on its own in between is not an error.
    """
    ips = by_ip(policies)
    if not ips:
        return 0
    doomed: list[tuple[_Entry, Flow]] = []
    for entry in _dump_entries():
        flow = _flow(entry)
        if flow.source not in ips and flow.destination not in ips:
            continue
        if not flow_allowed(flow, ips, address_sets):
            doomed.append((entry, flow))
    if not doomed:
        return 0
    gone = _delete_entries([entry for entry, _ in doomed])
    cut = [flow for (_, flow), deleted in zip(doomed, gone, strict=True) if deleted]
    for flow in cut[:_LOGGED_CUTS]:
        log.info(
            "cut connection %s -> %s:%s (protocol %d): no security group rule allows it any more",
            flow.source,
            flow.destination,
            flow.port,
            flow.protocol,
        )
    if len(cut) > _LOGGED_CUTS:
        log.info("cut %d more connections that no security group rule allows any more", len(cut) - _LOGGED_CUTS)
    return len(cut)


def stale_floating(
    entry_flow: tuple[IPv4Address, IPv4Address, IPv4Address, IPv4Address],
    mapped: Mapping[IPv4Address, IPv4Address],
    detached: Collection[IPv4Address],
) -> bool:
    """Does a connection use a floating IP translation that no longer holds? ``entry_flow`` is
    (original source, original destination, reply source, reply destination); ``mapped`` the floating
    IPs now (public -> private), ``detached`` public addresses just taken away."""
    orig_src, orig_dst, reply_src, reply_dst = entry_flow
    # DNATed inbound (to orig_dst, really to reply_src); SNATed outbound (from orig_src, seen as reply_dst)
    inbound = orig_dst != reply_src and (orig_dst in detached or (orig_dst in mapped and mapped[orig_dst] != reply_src))
    outbound = orig_src != reply_dst and (
        reply_dst in detached or (reply_dst in mapped and mapped[reply_dst] != orig_src)
    )
    return inbound or outbound


def cut_floating(mapped: Mapping[IPv4Address, IPv4Address], detached: Collection[IPv4Address]) -> int:
    """Delete the connections translated by a floating IP that was detached or now maps to another VM
    (Neutron does the same): without this they keep the old translation until they end. How many went."""
    doomed = []
    for entry in _dump_entries():
        addresses = (entry.orig.saddr, entry.orig.daddr, entry.reply.saddr, entry.reply.daddr)
        if stale_floating(tuple(IPv4Address(a) for a in addresses), mapped, detached):  # type: ignore[arg-type]
            doomed.append(entry)
    if not doomed:
        return 0
    cut = sum(_delete_entries(doomed))
    log.info("cut %d connection(s) through floating IPs that were detached or moved", cut)
    return cut


# -- ctnetlink by hand: pyroute2 0.9 takes ~0.4 ms to parse each dumped entry and ~1 ms a request, so a
# host tracking 10,000 connections would wait seconds on every rule change; this takes milliseconds. --

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK, _IPCTNL_MSG_CT_NEW, _IPCTNL_MSG_CT_GET, _IPCTNL_MSG_CT_DELETE = 1, 0, 1, 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG_ERROR, _NLMSG_DONE, _NLA_F_NESTED, _NLA_TYPE_MASK = 0x2, 0x3, 0x8000, 0x3FFF
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_ID, _CTA_ZONE = 1, 2, 12, 18
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST = 1, 2
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTO_ICMP_ID, _CTA_PROTO_ICMP_TYPE, _CTA_PROTO_ICMP_CODE = 4, 5, 6
_PER_DATAGRAM = 256  # delete requests per send; their acks fit the default receive buffer


@dataclass(frozen=True, slots=True)
class _Tuple:
    saddr: str
    daddr: str
    proto: int
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    orig: _Tuple
    reply: _Tuple
    id: int | None
    zone: int


def _attributes(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) of the attributes in data[start:end]."""
    found = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        found[kind & _NLA_TYPE_MASK] = (start + 4, start + length)
        start += length + (-length % 4)
    return found


def _tuple(data: bytes, start: int, end: int) -> _Tuple | None:
    """A CTA_TUPLE_* of IPv4 (None for anything else)."""
    attrs = _attributes(data, start, end)
    if _CTA_TUPLE_IP not in attrs or _CTA_TUPLE_PROTO not in attrs:
        return None
    ip = _attributes(data, *attrs[_CTA_TUPLE_IP])
    proto = _attributes(data, *attrs[_CTA_TUPLE_PROTO])
    if _CTA_IP_V4_SRC not in ip or _CTA_IP_V4_DST not in ip or _CTA_PROTO_NUM not in proto:
        return None

    def be16(kind: int) -> int | None:
        return struct.unpack_from("!H", data, proto[kind][0])[0] if kind in proto else None

    def u8(kind: int) -> int | None:
        return data[proto[kind][0]] if kind in proto else None

    return _Tuple(
        socket.inet_ntoa(data[ip[_CTA_IP_V4_SRC][0] : ip[_CTA_IP_V4_SRC][0] + 4]),
        socket.inet_ntoa(data[ip[_CTA_IP_V4_DST][0] : ip[_CTA_IP_V4_DST][0] + 4]),
        data[proto[_CTA_PROTO_NUM][0]],
        be16(_CTA_PROTO_SRC_PORT),
        be16(_CTA_PROTO_DST_PORT),
        be16(_CTA_PROTO_ICMP_ID),
        u8(_CTA_PROTO_ICMP_TYPE),
        u8(_CTA_PROTO_ICMP_CODE),
    )


def _netfilter_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _dump_entries() -> list[_Entry]:
    """Every IPv4 conntrack entry of this network namespace."""
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_GET
    request = struct.pack("=IHHII", 20, kind, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    request += struct.pack("=BBH", socket.AF_INET, 0, 0)
    entries: list[_Entry] = []
    with _netfilter_socket() as sock:
        sock.send(request)
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, msg_type, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    raise OSError(errno.EPROTO, "conntrack dump: bad netlink message")
                if msg_type == _NLMSG_DONE:
                    return entries
                if msg_type == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error:
                        raise OSError(-error, f"conntrack dump refused: {os.strerror(-error)}")
                elif msg_type == (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_NEW:
                    attrs = _attributes(data, offset + 20, offset + length)  # after nlmsghdr + nfgenmsg
                    orig = _tuple(data, *attrs[_CTA_TUPLE_ORIG]) if _CTA_TUPLE_ORIG in attrs else None
                    reply = _tuple(data, *attrs[_CTA_TUPLE_REPLY]) if _CTA_TUPLE_REPLY in attrs else None
                    if orig is not None and reply is not None:
                        entry_id = struct.unpack_from("!I", data, attrs[_CTA_ID][0])[0] if _CTA_ID in attrs else None
                        zone = struct.unpack_from("!H", data, attrs[_CTA_ZONE][0])[0] if _CTA_ZONE in attrs else 0
                        entries.append(_Entry(orig, reply, entry_id, zone))
                offset += length + (-length % 4)


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind | (_NLA_F_NESTED if nested else 0)) + payload + bytes(-length % 4)


def _delete_request(entry: _Entry, seq: int) -> bytes:
    """IPCTNL_MSG_CT_DELETE for this entry's original tuple, pinned to its id (a new connection that
    reused the tuple in between is not touched)."""
    orig = entry.orig
    ip = _attr(_CTA_IP_V4_SRC, socket.inet_aton(orig.saddr)) + _attr(_CTA_IP_V4_DST, socket.inet_aton(orig.daddr))
    proto = _attr(_CTA_PROTO_NUM, bytes((orig.proto,)))
    if orig.sport is not None and orig.dport is not None:
        proto += _attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", orig.sport))
        proto += _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", orig.dport))
    if orig.icmp_id is not None:
        proto += _attr(_CTA_PROTO_ICMP_ID, struct.pack("!H", orig.icmp_id))
    if orig.icmp_type is not None:
        proto += _attr(_CTA_PROTO_ICMP_TYPE, bytes((orig.icmp_type,)))
    if orig.icmp_code is not None:
        proto += _attr(_CTA_PROTO_ICMP_CODE, bytes((orig.icmp_code,)))
    body = _attr(_CTA_TUPLE_ORIG, _attr(_CTA_TUPLE_IP, ip, True) + _attr(_CTA_TUPLE_PROTO, proto, True), True)
    if entry.id is not None:
        body += _attr(_CTA_ID, struct.pack("!I", entry.id))
    if entry.zone:
        body += _attr(_CTA_ZONE, struct.pack("!H", entry.zone))
    header = struct.pack("=BBH", socket.AF_INET, 0, 0)  # nfgenmsg: family, version 0, resource id
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_DELETE
    payload = header + body
    return struct.pack("=IHHII", 16 + len(payload), kind, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + payload


def _delete_entries(entries: Sequence[_Entry]) -> list[bool]:
    """Delete conntrack entries, many per datagram; per entry, whether it was deleted (False: gone
    already). Any other refusal raises OSError with the kernel's errno."""
    deleted = [False] * len(entries)
    with _netfilter_socket() as sock:
        for start in range(0, len(entries), _PER_DATAGRAM):
            chunk = range(start, min(start + _PER_DATAGRAM, len(entries)))
            sock.send(b"".join(_delete_request(entries[i], i + 1) for i in chunk))
            waiting = set(i + 1 for i in chunk)
            while waiting:
                data = sock.recv(65536)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
                    if kind == _NLMSG_ERROR and seq in waiting:
                        (error,) = struct.unpack_from("=i", data, offset + 16)
                        waiting.discard(seq)
                        if error == 0:
                            deleted[seq - 1] = True
                        elif -error != errno.ENOENT:
                            raise OSError(-error, f"conntrack delete refused: {os.strerror(-error)}")
                    offset += max(length + (-length % 4), 16)
    return deleted


__all__ = ["Flow", "by_ip", "cut_disallowed", "cut_floating", "flow_allowed", "stale_floating"]
