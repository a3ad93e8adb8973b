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

import logging
import socket
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from bramble.network.driver import METADATA_ADDRESS, Rule, SecurityPolicy

log = logging.getLogger(__name__)

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


def _flow(entry: object) -> Flow | None:
    """The Flow of a pyroute2 ConntrackEntry, or None for what is not IPv4 TCP/UDP/ICMP-like."""
    orig, reply = entry.tuple_orig, entry.tuple_reply  # type: ignore[attr-defined]
    try:
        source, original = IPv4Address(orig.saddr), IPv4Address(orig.daddr)
        destination = IPv4Address(reply.saddr) if reply.saddr else original
    except ValueError:
        return None
    port = reply.sport if reply.sport is not None else orig.dport
    return Flow(source, destination, int(orig.proto or 0), port, original)


def cut_disallowed(policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]) -> int:
    """Delete every tracked connection to or from a VM that ``policies`` refuse; how many went.

    Needs CAP_NET_ADMIN in the network namespace, like the firewall itself (OSError or pyroute2's
    NetlinkError otherwise). An entry that vanished on its own in between is not an error.
    """
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError

    ips = by_ip(policies)
    if not ips:
        return 0
    cut = 0
    with Conntrack() as conntrack:
        doomed = []
        for entry in conntrack.dump_entries():
            flow = _flow(entry)
            if flow is None or (flow.source not in ips and flow.destination not in ips):
                continue
            if not flow_allowed(flow, ips, address_sets):
                doomed.append((entry, flow))
        for entry, flow in doomed:
            try:
                conntrack.delete(entry)
            except (OSError, NetlinkError) as exc:  # ENOENT: it ended by itself meanwhile
                log.debug("conntrack entry %s already gone: %s", flow, exc)
                continue
            cut += 1
            log.info(
                "cut connection %s -> %s:%s (protocol %d): no security group rule allows it any more",
                flow.source,
                flow.destination,
                flow.port,
                flow.protocol,
            )
    return cut


__all__ = ["Flow", "by_ip", "cut_disallowed", "flow_allowed"]
