"""Compile Bramble's firewall and NAT into libnftables JSON, and apply it in one transaction.

Three tables, each owned by one method so that replacing one never disturbs the others:

``table bridge bramble`` (anti-spoofing, stateless, before everything: bridge prerouting, priority -200)
    frames from a tap must carry its MAC and IPv4 address (DHCP from 0.0.0.0 and ARP probes excepted)
    and be IPv4 or ARP; a ``bt-*`` port with no policy is dropped whole (fail closed).

``table inet bramble`` (security groups, stateful)
    ``forward``/``input`` look up ``iifname . ip saddr`` in the map ``egress`` and jump to the tap's
    ``eg-<tap>`` chain; ``forward``/``output`` look up ``oifname . ip daddr`` in ``ingress`` and jump to
    ``in-<tap>``. Per-tap chains ``return`` what they allow (so a VM-to-VM packet passes the sender's
    egress and then the receiver's ingress chain) and ``drop`` the rest. Remote groups are named sets.

    Bridged traffic reaches the inet hooks through br_netfilter (``bridge-nf-call-iptables=1``) and
    there ``iifname``/``oifname`` are the bridge, not the port: that is why taps are keyed by
    (bridge, address), which is sound because the bridge table has already pinned each tap's address.
    Conntrack in the bridge family (``nf_conntrack_bridge``) would allow per-port keys, but it is not
    available on every kernel (it is not on our test machines); br_netfilter is.

``table ip bramble_nat`` (NAT)
    per network, base chains ``pre-<bridge>`` (metadata DNAT) and ``post-<bridge>`` (masquerade);
    ``fip-pre``/``fip-out``/``fip-post`` for floating IPs at a priority just before them, so a floating
    IP's SNAT wins over the network's masquerade.

Apply = one ``json_cmd`` with ``add table`` + ``delete table`` + the new contents: the kernel swaps the
whole table in one netlink batch or, on any error, keeps the old one.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Address
from typing import Any

from bramble.network.driver import (
    BRIDGE_PREFIX,
    METADATA_ADDRESS,
    TAP_PREFIX,
    FloatingIp,
    NetworkError,
    NetworkSpec,
    Rule,
    SecurityPolicy,
)

__all__ = [
    "FILTER_TABLE",
    "NAT_TABLE",
    "SPOOF_TABLE",
    "Nft",
    "clear_compile_cache",
    "floating_commands",
    "network_nat_commands",
    "remove_network_nat_commands",
    "security_batch",
    "security_commands",
]

Command = dict[str, Any]
FILTER_TABLE = ("inet", "bramble")
SPOOF_TABLE = ("bridge", "bramble")
NAT_TABLE = ("ip", "bramble_nat")
DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68


# -- expression helpers -------------------------------------------------------------------------------


def _match(left: Any, right: Any, op: str = "==") -> Command:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Command:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> Command:
    return {"meta": {"key": key}}


def _ct(key: str) -> Command:
    return {"ct": {"key": key}}


def _addr(cidr: Any) -> Any:
    """An address or a prefix as nft JSON wants it."""
    if getattr(cidr, "prefixlen", 32) == 32:
        return str(getattr(cidr, "network_address", cidr))
    return {"prefix": {"addr": str(cidr.network_address), "len": cidr.prefixlen}}


def _table_swap(family: str, name: str) -> list[Command]:
    """Create-if-missing, then delete, then create: replaces the table whatever existed, atomically."""
    table = {"family": family, "name": name}
    return [{"add": {"table": dict(table)}}, {"delete": {"table": dict(table)}}, {"add": {"table": dict(table)}}]


def _chain(family: str, table: str, name: str, hook: str | None = None, prio: int = 0, kind: str = "filter") -> Command:
    chain: dict[str, Any] = {"family": family, "table": table, "name": name}
    if hook:
        chain.update(type=kind, hook=hook, prio=prio, policy="accept")
    return {"add": {"chain": chain}}


def _rule(family: str, table: str, chain: str, *expr: Command) -> Command:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}}


# -- security groups ----------------------------------------------------------------------------------


def _rule_exprs(rule: Rule, remote_field: str) -> list[Command]:
    exprs: list[Command] = []
    if rule.cidr is not None and rule.cidr.prefixlen > 0:
        exprs.append(_match(_payload("ip", remote_field), _addr(rule.cidr)))
    elif rule.remote_set is not None:
        exprs.append(_match(_payload("ip", remote_field), "@" + _set_name(rule.remote_set)))
    if rule.protocol != "any":
        if rule.port_min is None:
            exprs.append(_match(_meta("l4proto"), rule.protocol))
        else:
            high = rule.port_max if rule.port_max is not None else rule.port_min
            ports: Any = rule.port_min if high == rule.port_min else {"range": [rule.port_min, high]}
            exprs.append(_match(_payload(rule.protocol, "dport"), ports))
    return [*exprs, {"return": None}]


def _set_name(remote_set: str) -> str:
    return "g-" + remote_set


def _check_unique(policies: Sequence[SecurityPolicy]) -> None:
    seen_taps: set[str] = set()
    seen_keys: set[tuple[str, IPv4Address]] = set()
    for policy in policies:
        if policy.tap in seen_taps:
            raise ValueError(f"two policies for tap {policy.tap}")
        if (policy.bridge, policy.ip) in seen_keys:
            raise ValueError(f"two taps claim {policy.ip} on {policy.bridge}")
        seen_taps.add(policy.tap)
        seen_keys.add((policy.bridge, policy.ip))


def _security_head(
    policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]
) -> list[Command]:
    """Validation, the anti-spoofing table, the filter table swap and the address sets."""
    _check_unique(policies)
    for policy in policies:
        for rule in (*policy.ingress, *policy.egress):
            if rule.remote_set is not None and rule.remote_set not in address_sets:
                raise ValueError(f"tap {policy.tap}: rule refers to unknown address set {rule.remote_set!r}")
    commands = _spoof_commands(policies)
    family, table = FILTER_TABLE
    commands += _table_swap(family, table)
    for set_name, members in sorted(address_sets.items()):
        Rule(remote_set=set_name)  # validates the name
        body: dict[str, Any] = {"family": family, "table": table, "name": _set_name(set_name), "type": "ipv4_addr"}
        if members:
            body["elem"] = sorted({str(IPv4Address(a)) for a in members}, key=IPv4Address)
        commands.append({"add": {"set": body}})
    return commands


@functools.lru_cache(maxsize=8192)
def _policy_chains(policy: SecurityPolicy) -> tuple[Command, ...]:
    """One tap's two chains. Cached: a live update usually changes few taps, the rest are reused."""
    family, table = FILTER_TABLE
    eg, ing = f"eg-{policy.tap}", f"in-{policy.tap}"
    commands = [_chain(family, table, eg), _chain(family, table, ing)]
    for rule in policy.egress:
        commands.append(_rule(family, table, eg, *_rule_exprs(rule, "daddr")))
    commands.append(_rule(family, table, eg, {"drop": None}))
    for rule in policy.ingress:
        commands.append(_rule(family, table, ing, *_rule_exprs(rule, "saddr")))
    commands.append(_rule(family, table, ing, {"drop": None}))
    return tuple(commands)


@functools.lru_cache(maxsize=8192)
def _policy_chains_json(policy: SecurityPolicy) -> str:
    return ",".join(json.dumps(c) for c in _policy_chains(policy))


def clear_compile_cache() -> None:
    """Forget compiled tap chains (benchmarks measure a cold compile with it)."""
    _policy_chains.cache_clear()
    _policy_chains_json.cache_clear()


def security_commands(
    policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]
) -> list[Command]:
    """The whole anti-spoofing and security-group ruleset for these taps, as one batch.

    Only the users' rules are per tap (plus one final drop per chain); everything common to all taps
    is a handful of rules in the base chains, keyed by sets, because the apply time grows with the
    number of rules the kernel has to build.
    """
    head = _security_head(policies, address_sets)
    return [*head, *(c for p in policies for c in _policy_chains(p)), *_security_tail(policies)]


def security_batch(policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]) -> str:
    """:func:`security_commands` as the JSON text ``Nft.apply_json`` takes, reusing cached tap chains."""
    head = _security_head(policies, address_sets)
    parts = [json.dumps(c) for c in head]
    parts += [_policy_chains_json(p) for p in policies]
    parts += [json.dumps(c) for c in _security_tail(policies)]
    return '{"nftables":[' + ",".join(parts) + "]}"


def _security_tail(policies: Sequence[SecurityPolicy]) -> list[Command]:
    """The verdict maps from (bridge, address) to each tap's chains, and the base chains that use them."""
    family, table = FILTER_TABLE
    commands: list[Command] = []
    egress_elems: list[Any] = []
    ingress_elems: list[Any] = []
    for policy in policies:
        key = {"concat": [policy.bridge, str(policy.ip)]}
        egress_elems.append([key, {"jump": {"target": f"eg-{policy.tap}"}}])
        ingress_elems.append([key, {"jump": {"target": f"in-{policy.tap}"}}])
    map_type = ["ifname", "ipv4_addr"]
    for name, elems in (("egress", egress_elems), ("ingress", ingress_elems)):
        body: dict[str, Any] = {"family": family, "table": table, "name": name, "type": map_type, "map": "verdict"}
        if elems:
            body["elem"] = elems
        commands.append({"add": {"map": body}})
    ours_in = _match(_meta("iifname"), BRIDGE_PREFIX + "*")
    ours_out = _match(_meta("oifname"), BRIDGE_PREFIX + "*")
    # replies to allowed connections: both sides' chains would let them through, so accept at once
    established = [_match(_ct("state"), ["established", "related"], "in"), {"accept": None}]
    invalid = _match(_ct("state"), "invalid", "in")
    egress = {"vmap": {"key": {"concat": [_meta("iifname"), _payload("ip", "saddr")]}, "data": "@egress"}}
    ingress = {"vmap": {"key": {"concat": [_meta("oifname"), _payload("ip", "daddr")]}, "data": "@ingress"}}
    metadata = {"ct": {"key": "ip daddr", "dir": "original"}}
    base: dict[str, list[list[Command]]] = {
        "forward": [
            established,
            [invalid, ours_in, {"drop": None}],
            [invalid, ours_out, {"drop": None}],
            [egress],
            [ingress],
        ],
        "input": [
            established,
            [invalid, ours_in, {"drop": None}],
            # DHCP to the host's server and the metadata service (DNATed to the host) are always allowed;
            # after the DNAT the port is the listener's, so only the original address is matched (only
            # the metadata DNAT brings a packet for 169.254.169.254 to this host)
            [ours_in, _match(_payload("udp", "dport"), DHCP_SERVER_PORT), {"accept": None}],
            [ours_in, _match(metadata, str(METADATA_ADDRESS)), _match(_meta("l4proto"), "tcp"), {"accept": None}],
            [egress],
        ],
        "output": [
            established,
            [
                ours_out,
                _match(_payload("udp", "sport"), DHCP_SERVER_PORT),
                _match(_payload("udp", "dport"), DHCP_CLIENT_PORT),
                {"accept": None},
            ],
            [ingress],
        ],
    }
    for hook, rules in base.items():
        commands.append(_chain(family, table, hook, hook=hook, prio=0))
        for exprs in rules:
            commands.append(_rule(family, table, hook, *exprs))
    return commands


def _spoof_commands(policies: Sequence[SecurityPolicy]) -> list[Command]:
    """Frames from a ``bt-*`` port must carry its MAC and address; a port with no policy has no entry in
    the sets and so loses everything. Stateless, in bridge prerouting before br_netfilter and conntrack."""
    family, table = SPOOF_TABLE
    commands = _table_swap(family, table)
    sets: dict[str, tuple[list[str], list[Any]]] = {
        "tap_mac": (["ifname", "ether_addr"], [{"concat": [p.tap, p.mac]} for p in policies]),
        "tap_ip": (["ifname", "ipv4_addr"], [{"concat": [p.tap, str(p.ip)]} for p in policies]),
        "tap_arp_ip": (  # ARP probes (RFC 5227) come from 0.0.0.0
            ["ifname", "ipv4_addr"],
            [{"concat": [p.tap, a]} for p in policies for a in (str(p.ip), "0.0.0.0")],
        ),
    }
    for name, (kind, elems) in sets.items():
        body: dict[str, Any] = {"family": family, "table": table, "name": name, "type": kind}
        if elems:
            body["elem"] = elems
        commands.append({"add": {"set": body}})
    tap = _match(_meta("iifname"), TAP_PREFIX + "*")
    is_arp = _match(_payload("ether", "type"), "arp")

    def keyed(protocol: str, field: str) -> Command:
        return {"concat": [_meta("iifname"), _payload(protocol, field)]}

    drop = {"drop": None}
    rules: list[list[Command]] = [
        [tap, _match(keyed("ether", "saddr"), "@tap_mac", "!="), drop],
        [tap, is_arp, _match(keyed("arp", "saddr ether"), "@tap_mac", "!="), drop],
        [tap, is_arp, _match(keyed("arp", "saddr ip"), "@tap_arp_ip", "!="), drop],
        [
            tap,
            _match(_payload("ip", "saddr"), "0.0.0.0"),
            _match(_payload("udp", "sport"), DHCP_CLIENT_PORT),
            _match(_payload("udp", "dport"), DHCP_SERVER_PORT),
            {"accept": None},
        ],
        [tap, _match(_payload("ether", "type"), "ip"), _match(keyed("ip", "saddr"), "@tap_ip", "!="), drop],
        [tap, _match(_payload("ether", "type"), {"set": ["ip", "arp"]}, "!="), drop],
    ]
    commands.append(_chain(family, table, "prerouting", hook="prerouting", prio=-200))
    for exprs in rules:
        commands.append(_rule(family, table, "prerouting", *exprs))
    return commands


# -- NAT ----------------------------------------------------------------------------------------------

DSTNAT, SRCNAT = -100, 100
FLOATING_OFFSET = -10  # floating IP chains run just before the networks' own NAT


def _nat_table_exists() -> list[Command]:
    family, table = NAT_TABLE
    return [{"add": {"table": {"family": family, "name": table}}}]


def _replace_chain(name: str, hook: str, prio: int) -> list[Command]:
    """Create the base chain if missing and empty it: the rules that follow are its whole content."""
    family, table = NAT_TABLE
    chain = _chain(family, table, name, hook=hook, prio=prio, kind="nat")
    return [chain, {"flush": {"chain": {"family": family, "table": table, "name": name}}}]


def network_nat_commands(spec: NetworkSpec) -> list[Command]:
    """Masquerade and metadata DNAT for one network (empty chains when it has neither)."""
    family, table = NAT_TABLE
    pre, post = f"pre-{spec.bridge}", f"post-{spec.bridge}"
    commands = (
        _nat_table_exists() + _replace_chain(pre, "prerouting", DSTNAT) + _replace_chain(post, "postrouting", SRCNAT)
    )
    if spec.metadata is not None:
        target = {"addr": str(spec.metadata.address), "port": spec.metadata.port}
        commands.append(
            _rule(
                family,
                table,
                pre,
                _match(_meta("iifname"), spec.bridge),
                _match(_payload("ip", "daddr"), str(METADATA_ADDRESS)),
                _match(_payload("tcp", "dport"), 80),
                {"dnat": target},
            )
        )
    if spec.nat:
        exprs = [
            _match(_payload("ip", "saddr"), _addr(spec.cidr)),
            _match(_payload("ip", "daddr"), _addr(spec.cidr), "!="),
        ]
        if spec.uplink is not None:
            exprs.append(_match(_meta("oifname"), spec.uplink))
        commands.append(_rule(family, table, post, *exprs, {"masquerade": None}))
    return commands


def remove_network_nat_commands(bridge: str) -> list[Command]:
    family, table = NAT_TABLE
    commands = _nat_table_exists()
    for name, hook, prio in ((f"pre-{bridge}", "prerouting", DSTNAT), (f"post-{bridge}", "postrouting", SRCNAT)):
        commands.append(_chain(family, table, name, hook=hook, prio=prio, kind="nat"))  # so that delete succeeds
        commands.append({"delete": {"chain": {"family": family, "table": table, "name": name}}})
    return commands


def floating_commands(floating: Iterable[FloatingIp]) -> list[Command]:
    """All floating IPs: DNAT of the public address (from outside and from the host), SNAT of replies'
    counterpart (connections the VM opens leave with its public address)."""
    family, table = NAT_TABLE
    commands = _nat_table_exists()
    commands += _replace_chain("fip-pre", "prerouting", DSTNAT + FLOATING_OFFSET)
    commands += _replace_chain("fip-out", "output", DSTNAT + FLOATING_OFFSET)
    commands += _replace_chain("fip-post", "postrouting", SRCNAT + FLOATING_OFFSET)
    seen: set[IPv4Address] = set()
    for fip in floating:
        if fip.public_ip in seen:
            raise ValueError(f"floating IP {fip.public_ip} is mapped twice")
        seen.add(fip.public_ip)
        to_private = {"dnat": {"addr": str(fip.private_ip)}}
        public = _match(_payload("ip", "daddr"), str(fip.public_ip))
        commands.append(_rule(family, table, "fip-pre", public, to_private))
        commands.append(_rule(family, table, "fip-out", public, to_private))
        commands.append(
            _rule(
                family,
                table,
                "fip-post",
                _match(_payload("ip", "saddr"), str(fip.private_ip)),
                _match(_meta("oifname"), fip.bridge, "!="),
                {"snat": {"addr": str(fip.public_ip)}},
            )
        )
    return commands


# -- applying -----------------------------------------------------------------------------------------


class Nft:
    """One libnftables context for this process's network namespace; batches run as one transaction."""

    def __init__(self) -> None:
        try:
            import nftables  # Debian's python3-nftables, bound to libnftables of the installed nft
        except ImportError as exc:  # pragma: no cover - depends on the host
            raise NetworkError("python3-nftables is not installed (apt-get install python3-nftables)") from exc
        self._nft = nftables.Nftables()
        # JSON input needs JSON output on (libnftables 1.0.6 has no input flag); terse keeps the cache
        # fetch that libnftables does before a JSON batch from reading every set element (2x faster)
        self._nft.set_json_output(True)
        self._nft.set_terse_output(True)
        self._nft.set_handle_output(False)
        self._lock = threading.Lock()  # a libnftables context is not thread-safe

    def apply(self, commands: list[Command]) -> None:
        """Run ``commands`` as one batch; on error nothing of it is applied and NetworkError says why."""
        self.apply_json(json.dumps({"nftables": commands}))

    def apply_json(self, batch: str) -> None:
        """Run a JSON batch given as text (``{"nftables": [...]}``) as one transaction."""
        with self._lock:
            rc, _out, err = self._nft.cmd(batch)
        if rc != 0:
            first = " ".join(err.strip().splitlines()[:3]) or f"libnftables returned {rc}"
            raise NetworkError(f"nftables refused the change (nothing applied): {first}")

    def list_table(self, family: str, name: str) -> list[dict[str, Any]]:
        """The table's objects as libnftables JSON, or [] when it does not exist."""
        with self._lock:
            self._nft.set_terse_output(False)
            try:
                rc, out, _err = self._nft.cmd(f"list table {family} {name}")
            finally:
                self._nft.set_terse_output(True)
        if rc != 0:
            return []
        objects: list[dict[str, Any]] = json.loads(out)["nftables"]
        return objects
