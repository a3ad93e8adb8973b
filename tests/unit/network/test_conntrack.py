"""Which open connections the loaded security rules still allow (``network.conntrack.flow_allowed``).

The kernel side (entries really deleted, a cut connection really stops) is tested in
``tests/integration/network/test_bridge_driver.py``; these are the decisions.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network

import pytest

from bramble.network.conntrack import Flow, by_ip, flow_allowed, stale_floating
from bramble.network.driver import Rule, SecurityPolicy

A, B, C = IPv4Address("10.0.0.10"), IPv4Address("10.0.0.11"), IPv4Address("10.0.0.12")
OUTSIDE = IPv4Address("192.0.2.7")
TCP, UDP, ICMP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP
ANY_OUT = Rule(cidr=IPv4Network("0.0.0.0/0"))
SETS = {"web": {A, B}}


def policy(ip: IPv4Address, ingress: tuple[Rule, ...] = (), egress: tuple[Rule, ...] = (ANY_OUT,)) -> SecurityPolicy:
    last = ip.packed[-1]
    return SecurityPolicy(f"bt-{last}", "bb-test", f"02:00:00:00:00:{last:02x}", ip, ingress, egress)


def flow(src: IPv4Address, dst: IPv4Address, proto: int = TCP, port: int | None = 22) -> Flow:
    return Flow(src, dst, proto, port, dst)


SSH_FROM_WEB = Rule("tcp", 22, remote_set="web")
POLICIES = by_ip(
    [
        policy(A, ingress=(SSH_FROM_WEB,)),
        policy(B, ingress=(SSH_FROM_WEB, Rule("udp", 5000, 5100, cidr=IPv4Network("192.0.2.0/24")))),
        policy(C, ingress=(Rule("icmp"),), egress=()),
    ]
)


@pytest.mark.parametrize(
    ("the_flow", "allowed", "why"),
    [
        (flow(A, B), True, "A may send anything, B admits ssh from web"),
        (flow(B, A), True, "and the other way"),
        (flow(A, B, port=23), False, "only port 22"),
        (flow(A, B, UDP, 22), False, "only tcp"),
        (flow(C, B), False, "C may send nothing"),
        (flow(OUTSIDE, A), False, "the outside is not in web"),
        (flow(OUTSIDE, B, UDP, 5050), True, "B's udp range from 192.0.2.0/24"),
        (flow(OUTSIDE, B, UDP, 5101), False, "past the range"),
        (flow(IPv4Address("198.51.100.1"), B, UDP, 5050), False, "outside the cidr"),
        (flow(A, C, ICMP, None), True, "C admits icmp from anywhere"),
        (flow(A, C, TCP, 22), False, "but not tcp"),
        (flow(A, OUTSIDE, TCP, 443), True, "A may go out"),
        (flow(C, OUTSIDE, TCP, 443), False, "C may not"),
        (flow(C, OUTSIDE, UDP, 67), True, "DHCP always passes"),
        (Flow(C, IPv4Address("10.0.0.1"), TCP, 8775, IPv4Address("169.254.169.254")), True, "metadata always"),
        (flow(OUTSIDE, IPv4Address("198.51.100.1")), True, "neither end is a VM: not ours to judge"),
    ],
)
def test_flow_decisions(the_flow: Flow, allowed: bool, why: str) -> None:
    assert flow_allowed(the_flow, POLICIES, SETS) is allowed, why


def test_a_remote_group_is_judged_by_its_members_now() -> None:
    assert flow_allowed(flow(A, B), POLICIES, SETS)
    assert not flow_allowed(flow(A, B), POLICIES, {"web": {B}})  # A left web
    assert not flow_allowed(flow(A, B), POLICIES, {})  # the group is gone


def test_the_same_address_on_two_networks_keeps_what_either_allows() -> None:
    two = by_ip([policy(B), SecurityPolicy("bt-other", "bb-other", "02:00:00:00:01:0b", B, (Rule("tcp", 22),))])
    assert flow_allowed(flow(OUTSIDE, B), two, SETS)
    assert not flow_allowed(flow(OUTSIDE, B, port=80), two, SETS)


PUBLIC, OTHER_PUBLIC, UPLINK = IPv4Address("198.51.100.50"), IPv4Address("198.51.100.51"), IPv4Address("198.51.100.1")


@pytest.mark.parametrize(
    ("addresses", "mapped", "detached", "stale", "why"),
    [
        ((OUTSIDE, PUBLIC, B, OUTSIDE), {PUBLIC: B}, set(), False, "inbound through a floating IP that holds"),
        ((OUTSIDE, PUBLIC, B, OUTSIDE), {}, {PUBLIC}, True, "inbound through a detached one"),
        ((OUTSIDE, PUBLIC, B, OUTSIDE), {PUBLIC: A}, set(), True, "inbound, the address now maps to A"),
        ((B, OUTSIDE, OUTSIDE, PUBLIC), {PUBLIC: B}, set(), False, "outbound, SNATed to B's floating IP"),
        ((B, OUTSIDE, OUTSIDE, PUBLIC), {}, {PUBLIC}, True, "outbound through a detached one"),
        ((B, OUTSIDE, OUTSIDE, PUBLIC), {PUBLIC: A}, set(), True, "outbound, the address now is A's"),
        ((B, OUTSIDE, OUTSIDE, UPLINK), {}, {PUBLIC}, False, "masqueraded to the uplink: not a floating IP"),
        ((A, IPv4Address("169.254.169.254"), IPv4Address("10.0.0.1"), A), {}, {PUBLIC}, False, "metadata"),
        ((OUTSIDE, OTHER_PUBLIC, C, OUTSIDE), {PUBLIC: B}, {PUBLIC}, False, "another floating IP, not ours"),
        ((A, B, B, A), {}, {PUBLIC}, False, "no translation at all"),
    ],
)
def test_floating_ip_translations_that_no_longer_hold(
    addresses: tuple[IPv4Address, ...],
    mapped: dict[IPv4Address, IPv4Address],
    detached: set[IPv4Address],
    stale: bool,
    why: str,
) -> None:
    assert stale_floating(addresses, mapped, detached) is stale, why  # type: ignore[arg-type]
