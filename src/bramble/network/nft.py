"""Compile Bramble's firewall and NAT for nftables, and apply each change in one transaction.

Three tables, each owned by one method so that replacing one never disturbs the others:

``table bridge bramble`` (anti-spoofing, stateless, before everything: bridge prerouting, priority -200)
    frames from a tap must carry its MAC and IPv4 address (DHCP from 0.0.0.0 and ARP probes excepted)
    and be IPv4 or ARP; a ``bt-*`` port with no policy is dropped whole (fail closed).

``table inet bramble`` (security groups, stateful)
    ``forward``/``input`` send IPv4 from a bridge to its ``eg-<bridge>`` chain, ``forward``/``output``
    IPv4 to a bridge to ``in-<bridge>``. Such a chain lets addresses that are not its taps' pass, then
    ``return``s what one of its sets admits (so a VM-to-VM packet passes the sender's egress and then the
    receiver's ingress chain) and drops the rest. The users' rules are the sets' elements
    (``tap . proto . port``, ``tap . remote cidr . proto . port range``, ...); a remote group is its own
    address set ``g-<group>`` matched in front of the sets for that group's rules.

    Bridged traffic reaches the inet hooks through br_netfilter (``bridge-nf-call-iptables=1``) and
    there ``iifname``/``oifname`` are the bridge, not the port: that is why taps are keyed by
    (bridge, address), which is sound because the bridge table has already pinned each tap's address.
    Conntrack in the bridge family (``nf_conntrack_bridge``) would allow per-port keys, but it is not
    available on every kernel (it is not on our test machines); br_netfilter is.

    Both security tables are loaded as nft text by :class:`SecurityFirewall`: the first time (and whenever
    the structure changes) as ``add table``/``delete table``/the contents, which the kernel swaps whole;
    after that as the set elements that changed. Either way one netlink batch: all of it or, on any
    error, none.

``table ip bramble_nat`` (NAT, libnftables JSON)
    per network, base chains ``pre-<bridge>`` (metadata DNAT) and ``post-<bridge>`` (masquerade);
    ``fip-pre``/``fip-out``/``fip-post`` for floating IPs at a priority just before them, so a floating
    IP's SNAT wins over the network's masquerade.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
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
    "GENERATION_SET",
    "NAT_TABLE",
    "SPOOF_TABLE",
    "Nft",
    "SecurityFirewall",
    "SecurityRuleset",
    "clear_compile_cache",
    "floating_commands",
    "network_nat_commands",
    "remove_network_nat_commands",
    "security_ruleset",
]

log = logging.getLogger(__name__)

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


def _addr(cidr: Any) -> Any:
    """An address or a prefix as nft JSON wants it."""
    if getattr(cidr, "prefixlen", 32) == 32:
        return str(getattr(cidr, "network_address", cidr))
    return {"prefix": {"addr": str(cidr.network_address), "len": cidr.prefixlen}}


def _chain(family: str, table: str, name: str, hook: str | None = None, prio: int = 0, kind: str = "filter") -> Command:
    chain: dict[str, Any] = {"family": family, "table": table, "name": name}
    if hook:
        chain.update(type=kind, hook=hook, prio=prio, policy="accept")
    return {"add": {"chain": chain}}


def _rule(family: str, table: str, chain: str, *expr: Command) -> Command:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}}


# -- security groups ----------------------------------------------------------------------------------
#
# Rules are data: every user rule becomes one element of a set, and each (bridge, direction) has a fixed
# handful of kernel rules that look packets up in those sets (7, plus 4 per remote group it names).
# 1,000 user rules are ~1,000 set elements, and a rule change is a few element deletions/additions.
# Most of the apply time is libnftables parsing what it is sent, so the batch is nft text (its JSON
# input is no faster to parse and re-reads the whole ruleset before every batch).

_DIRECTIONS = (  # direction, chain/set prefix, the tap's own address field, the remote side's field
    ("ingress", "in", "ip daddr", "ip saddr"),
    ("egress", "eg", "ip saddr", "ip daddr"),
)
_ANYWHERE = IPv4Network("0.0.0.0/0")
_PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17}
# set kinds: nft type after the tap's address, interval flag, the lookup key after the tap's field
# ("{remote}" is the remote side's field). A remote group's rules use the first four kinds, behind a
# match on the group's own address set.
_KINDS: dict[str, tuple[str, bool, str]] = {
    "all": ("", False, ""),
    "proto": (" . inet_proto", False, " . meta l4proto"),
    "port": (" . inet_proto . inet_service", False, " . meta l4proto . th dport"),
    "ports": (" . inet_proto . inet_service", True, " . meta l4proto . th dport"),
    "cidr": (" . ipv4_addr", True, " . {remote}"),
    "cidr-proto": (" . ipv4_addr . inet_proto", True, " . {remote} . meta l4proto"),
    "cidr-ports": (" . ipv4_addr . inet_proto . inet_service", True, " . {remote} . meta l4proto . th dport"),
}
_GROUP_KINDS = ("all", "proto", "port", "ports")
GENERATION_SET = "generation"  # one number per table; every incremental batch replaces it (SecurityFirewall)
_TABLES = (SPOOF_TABLE, FILTER_TABLE)
MAX_INTERVAL_REMOVALS = 32  # beyond this an incremental batch costs more than a whole replace

SetKey = tuple[str, str, str]  # (family, table, set name)
_Span = tuple[int, int]


@dataclass(frozen=True)
class SecurityRuleset:
    """Both security tables as nft text: ``structure`` (every set declared empty, chains, rules) and each
    set's elements. Rulesets with the same structure differ only in elements, so going from one to the
    other is a batch of element changes (:meth:`delta_text`)."""

    structure: str
    elements: Mapping[SetKey, frozenset[str]]
    interval_sets: frozenset[SetKey] = frozenset()

    def full_text(self, generation: int) -> str:
        """Replace both tables whatever existed (``add``/``delete``/then the contents): one transaction."""
        parts = [f"add table {f} {t}\ndelete table {f} {t}\n" for f, t in _TABLES]
        parts.append(self.structure)
        for (family, table, name), elems in sorted(self.elements.items()):
            if elems:
                parts.append(f"add element {family} {table} {name} {{ {', '.join(sorted(elems))} }}\n")
        parts += [f"add element {f} {t} {GENERATION_SET} {{ {generation} }}\n" for f, t in _TABLES]
        return "".join(parts)

    def delta_text(self, applied: SecurityRuleset, generation: int, previous: int) -> str | None:
        """The element changes from ``applied``, or None when replacing the tables whole is better: the
        structure differs, or more than ``MAX_INTERVAL_REMOVALS`` interval elements go (the kernel's
        concatenated-range sets shift their whole lookup table for each removal, while a new set is
        built in one go).

        Each table's generation element goes from ``previous`` to ``generation``: if anyone replaced or
        removed a table since ``applied`` was loaded, that delete fails and with it the whole batch.
        """
        if self.structure != applied.structure:
            return None
        removals = sum(
            len(applied.elements.get(key, frozenset()) - self.elements.get(key, frozenset()))
            for key in self.interval_sets
        )
        if removals > MAX_INTERVAL_REMOVALS:
            return None
        deletes = [f"delete element {f} {t} {GENERATION_SET} {{ {previous} }}\n" for f, t in _TABLES]
        adds = [f"add element {f} {t} {GENERATION_SET} {{ {generation} }}\n" for f, t in _TABLES]
        for key in sorted(set(self.elements) | set(applied.elements)):
            family, table, name = key
            new, old = self.elements.get(key, frozenset()), applied.elements.get(key, frozenset())
            gone, added = old - new, new - old
            if gone:
                deletes.append(f"delete element {family} {table} {name} {{ {', '.join(sorted(gone))} }}\n")
            if added:
                adds.append(f"add element {family} {table} {name} {{ {', '.join(sorted(added))} }}\n")
        return "".join(deletes + adds)  # deletions first: a new interval may overlap one that goes


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


def _port_text(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


@functools.lru_cache(maxsize=65536)
def _rule_slot(rule: Rule) -> tuple[str, str, str, tuple[_Span, ...]]:
    """Where a rule goes: (remote group or "", set kind, its element after the tap address, the element's
    spans for overlap checks). Cached: the same rules recur across the taps of a group."""
    group = rule.remote_set or ""
    cidr = rule.cidr if not group and rule.cidr is not None and rule.cidr != _ANYWHERE else None
    spans: list[_Span] = []
    tail = ""
    kind = "all"
    if rule.protocol != "any":
        number = _PROTOCOL_NUMBERS[rule.protocol]
        spans.append((number, number))
        tail = f" . {rule.protocol}"
        kind = "proto"
        if rule.port_min is not None:
            high = rule.port_max if rule.port_max is not None else rule.port_min
            spans.append((rule.port_min, high))
            tail += f" . {_port_text(rule.port_min, high)}"
            kind = "port" if high == rule.port_min else "ports"
    if cidr is not None:
        kind = {"all": "cidr", "proto": "cidr-proto"}.get(kind, "cidr-ports")
        spans.insert(0, (int(cidr.network_address), int(cidr.broadcast_address)))
        tail = f" . {cidr}{tail}"
    return group, kind, tail, tuple(spans)


def clear_compile_cache() -> None:
    """Forget compiled rules (benchmarks measure a cold compile with it)."""
    _rule_slot.cache_clear()
    _tap_rules.cache_clear()


class _TapRules:
    """One tap's rules in one direction, sorted into set elements. A rule whose element would overlap
    another of the tap's in an interval set (the kernel refuses those) becomes a plain rule instead."""

    def __init__(self, tap_field: str, remote_field: str) -> None:
        self.tap_field, self.remote_field = tap_field, remote_field
        self.elements: dict[tuple[str, str], set[str]] = {}  # (remote group or "", kind) -> elements
        self.spans: dict[tuple[str, str, str], list[tuple[_Span, ...]]] = {}  # (group, kind, tap) -> taken
        self.plain: list[str] = []

    def add(self, tap: str, rule: Rule) -> None:
        group, kind, tail, spans = _rule_slot(rule)
        element = tap + tail
        elements = self.elements.setdefault((group, kind), set())
        if element in elements:
            return
        if _KINDS[kind][1]:
            taken = self.spans.setdefault((group, kind, tap), [])
            if any(_overlap(spans, other) for other in taken):
                self.plain.append(self._plain_rule(tap, rule))
                return
            taken.append(spans)
        elements.add(element)

    def _plain_rule(self, tap: str, rule: Rule) -> str:
        parts = [f"{self.tap_field} {tap}"]
        if rule.remote_set is not None:
            parts.append(f"{self.remote_field} @{_set_name(rule.remote_set)}")
        elif rule.cidr is not None and rule.cidr != _ANYWHERE:
            parts.append(f"{self.remote_field} {rule.cidr}")
        if rule.protocol != "any":
            parts.append(f"meta l4proto {rule.protocol}")
            if rule.port_min is not None:
                high = rule.port_max if rule.port_max is not None else rule.port_min
                parts.append(f"th dport {_port_text(rule.port_min, high)}")
        return " ".join(parts) + " return"


@functools.lru_cache(maxsize=16384)
def _tap_rules(
    tap: str, rules: tuple[Rule, ...], tap_field: str, remote_field: str
) -> tuple[tuple[tuple[tuple[str, str], tuple[str, ...]], ...], tuple[str, ...]]:
    """One tap's rules in one direction: its elements per (remote group, kind) and its plain rules.
    Cached: a live change recompiles only the taps whose rules changed."""
    compiled = _TapRules(tap_field, remote_field)
    for rule in rules:
        compiled.add(tap, rule)
    elements = tuple((slot, tuple(elems)) for slot, elems in compiled.elements.items() if elems)
    return elements, tuple(compiled.plain)


def _overlap(a: tuple[_Span, ...], b: tuple[_Span, ...]) -> bool:
    return all(lo <= other_hi and other_lo <= hi for (lo, hi), (other_lo, other_hi) in zip(a, b, strict=True))


def security_ruleset(
    policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]
) -> SecurityRuleset:
    """The whole anti-spoofing and security-group firewall for these taps (ValueError for bad input).

    ``table inet bramble``: per bridge with taps (the i-th in name order), a chain per direction
    (``in-<bridge>``, ``eg-<bridge>``) that lets addresses pass that are none of its taps' (set
    ``vms<i>``), ``return``s what a set admits and drops the rest. Set ``in<i>-port`` holds
    ``tap . proto . port`` elements, ``in<i>-cidr-ports`` ``tap . remote cidr . proto . port range``,
    ``in<i>-g<j>-port`` the ``-port`` elements of rules whose remote side is the j-th group that
    direction names (matched against that group's address set ``g-<group>``), and so on.
    """
    _check_unique(policies)
    for set_name in address_sets:
        Rule(remote_set=set_name)  # validates the name
    for policy in policies:
        for rule in (*policy.ingress, *policy.egress):
            if rule.remote_set is not None and rule.remote_set not in address_sets:
                raise ValueError(f"tap {policy.tap}: rule refers to unknown address set {rule.remote_set!r}")
    elements: dict[SetKey, frozenset[str]] = {}
    intervals: set[SetKey] = set()
    structure = [_spoof_structure(policies, elements)]
    family, table = FILTER_TABLE
    lines = [f"table {family} {table} {{", f"  set {GENERATION_SET} {{ type inet_service; }}"]
    for set_name, members in sorted(address_sets.items()):
        lines.append(f"  set {_set_name(set_name)} {{ type ipv4_addr; }}")
        elements[(family, table, _set_name(set_name))] = frozenset(
            str(a if isinstance(a, IPv4Address) else IPv4Address(a)) for a in members
        )
    by_bridge: dict[str, list[SecurityPolicy]] = {}
    for policy in policies:
        by_bridge.setdefault(policy.bridge, []).append(policy)
    jumps: dict[str, list[str]] = {"in": [], "eg": []}
    for index, bridge in enumerate(sorted(by_bridge)):
        taps = [(str(p.ip), p) for p in by_bridge[bridge]]
        vms = f"vms{index}"
        lines.append(f"  set {vms} {{ type ipv4_addr; }}")
        elements[(family, table, vms)] = frozenset(ip for ip, _ in taps)
        for direction, prefix, tap_field, remote_field in _DIRECTIONS:
            merged: dict[tuple[str, str], list[str]] = {}
            plain: list[str] = []
            for ip, policy in taps:
                tap_elements, tap_plain = _tap_rules(
                    ip, policy.ingress if direction == "ingress" else policy.egress, tap_field, remote_field
                )
                for slot, elems in tap_elements:
                    merged.setdefault(slot, []).extend(elems)
                plain += tap_plain
            chain = [f"    {tap_field} != @{vms} return"]
            slots = [("", f"{prefix}{index}", kind) for kind in _KINDS]
            for number, group in enumerate(sorted({group for group, _ in merged if group})):
                slots += [(group, f"{prefix}{index}-g{number}", kind) for kind in _GROUP_KINDS]
            for group, stem, kind in slots:
                name = f"{stem}-{kind}"
                kind_type, interval, key = _KINDS[kind]
                lines.append(f"  set {name} {{ type ipv4_addr{kind_type};{' flags interval;' if interval else ''} }}")
                elements[(family, table, name)] = frozenset(merged.get((group, kind), ()))
                if interval:
                    intervals.add((family, table, name))
                guard = f"{remote_field} @{_set_name(group)} " if group else ""
                chain.append(f"    {guard}{tap_field}{key.format(remote=remote_field)} @{name} return")
            chain += [f"    {rule}" for rule in plain]
            lines += [f"  chain {prefix}-{bridge} {{", *chain, "    drop", "  }"]
            jumps[prefix].append(f'"{bridge}" : jump {prefix}-{bridge}')
    lines += _base_chains(jumps)
    structure.append("\n".join(lines) + "\n}\n")
    return SecurityRuleset("".join(structure), elements, frozenset(intervals))


def _base_chains(jumps: Mapping[str, list[str]]) -> list[str]:
    """forward/input/output: replies pass, then IPv4 from/to a bridge goes to that bridge's chains."""
    ours_in, ours_out = f'iifname "{BRIDGE_PREFIX}*"', f'oifname "{BRIDGE_PREFIX}*"'
    # IPv4 only: the bridge chains drop what no set admits (guests' IPv6 never passes the bridge table)
    egress = [f"    meta nfproto ipv4 iifname vmap {{ {', '.join(jumps['eg'])} }}"] if jumps["eg"] else []
    ingress = [f"    meta nfproto ipv4 oifname vmap {{ {', '.join(jumps['in'])} }}"] if jumps["in"] else []
    established = "    ct state established,related accept"  # replies to what both sides' chains allowed
    chains = {
        "forward": [
            established,
            f"    ct state invalid {ours_in} drop",
            f"    ct state invalid {ours_out} drop",
            *egress,
            *ingress,
        ],
        "input": [
            established,
            f"    ct state invalid {ours_in} drop",
            # DHCP to the host's server and the metadata service (DNATed to the host) are always allowed;
            # after the DNAT the port is the listener's, so only the original address is matched (only
            # the metadata DNAT brings a packet for 169.254.169.254 to this host)
            f"    {ours_in} udp dport {DHCP_SERVER_PORT} accept",
            f"    {ours_in} ct original ip daddr {METADATA_ADDRESS} meta l4proto tcp accept",
            *egress,
        ],
        "output": [
            established,
            f"    {ours_out} udp sport {DHCP_SERVER_PORT} udp dport {DHCP_CLIENT_PORT} accept",
            *ingress,
        ],
    }
    lines = []
    for hook, body in chains.items():
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;", *body, "  }"]
    return lines


def _spoof_structure(policies: Sequence[SecurityPolicy], elements: dict[SetKey, frozenset[str]]) -> str:
    """Frames from a ``bt-*`` port must carry its MAC and address; a port with no policy has no entry in
    the sets and so loses everything. Stateless, in bridge prerouting before br_netfilter and conntrack."""
    family, table = SPOOF_TABLE
    elements[(family, table, "tap_mac")] = frozenset(f'"{p.tap}" . {p.mac}' for p in policies)
    elements[(family, table, "tap_ip")] = frozenset(f'"{p.tap}" . {p.ip}' for p in policies)
    tap = f'iifname "{TAP_PREFIX}*"'
    lines = (
        f"table {family} {table} {{",
        f"  set {GENERATION_SET} {{ type inet_service; }}",
        "  set tap_mac { type ifname . ether_addr; }",
        "  set tap_ip { type ifname . ipv4_addr; }",
        "  chain prerouting {",
        "    type filter hook prerouting priority -200; policy accept;",
        f"    {tap} iifname . ether saddr != @tap_mac drop",
        f"    {tap} ether type arp iifname . arp saddr ether != @tap_mac drop",
        # ARP from the tap's own address, or from 0.0.0.0 (RFC 5227 probes)
        f"    {tap} ether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @tap_ip drop",
        f"    {tap} ip saddr 0.0.0.0 udp sport {DHCP_CLIENT_PORT} udp dport {DHCP_SERVER_PORT} accept",
        f"    {tap} ether type ip iifname . ip saddr != @tap_ip drop",
        f"    {tap} ether type != {{ ip, arp }} drop",
        "  }",
        "}",
    )
    return "\n".join(lines) + "\n"


class SecurityFirewall:
    """Loads security rulesets and remembers the last one, so that a change sends only the elements that
    differ; anything else (first apply, other structure, a table changed behind our back) replaces both
    tables whole. Either way it is one transaction: the kernel applies all of it or none."""

    def __init__(self, nft: Nft) -> None:
        self._nft = nft
        self._applied: SecurityRuleset | None = None
        self._generation = secrets.randbelow(65535) + 1
        self._lock = threading.Lock()
        self.last_mode = ""  # how the last successful apply went: "delta" or "full"
        # Whether the last successful apply may have taken an allowance away (an element or the
        # structure went, or what was loaded before is unknown): open connections need checking then.
        self.last_removed = False

    def apply(self, ruleset: SecurityRuleset, *, full: bool = False) -> str:
        """Load ``ruleset``; ``full`` forces the whole replace. Returns ``"delta"`` or ``"full"``."""
        with self._lock:
            following = self._generation % 65535 + 1
            removed = self._applied is None or _takes_away(self._applied, ruleset)
            if self._applied is not None and not full:
                delta = ruleset.delta_text(self._applied, following, self._generation)
                if delta is not None:
                    try:
                        self._nft.apply_text(delta)
                    except NetworkError as exc:
                        log.warning("incremental firewall update refused, replacing the tables whole: %s", exc)
                    else:
                        self._applied, self._generation, self.last_mode = ruleset, following, "delta"
                        self.last_removed = removed
                        return "delta"
            self._applied = None  # unknown until a full replace works
            self._nft.apply_text(ruleset.full_text(following))
            self._applied, self._generation, self.last_mode = ruleset, following, "full"
            self.last_removed = removed
            return "full"


def _takes_away(old: SecurityRuleset, new: SecurityRuleset) -> bool:
    return old.structure != new.structure or any(
        elems - new.elements.get(key, frozenset()) for key, elems in old.elements.items()
    )


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
        self._text = nftables.Nftables()  # with JSON output on, libnftables first tries to parse text as JSON
        self._lock = threading.Lock()  # a libnftables context is not thread-safe

    def apply(self, commands: list[Command]) -> None:
        """Run ``commands`` as one batch; on error nothing of it is applied and NetworkError says why."""
        self.apply_json(json.dumps({"nftables": commands}))

    def apply_json(self, batch: str) -> None:
        """Run a JSON batch given as text (``{"nftables": [...]}``) as one transaction."""
        with self._lock:
            rc, _out, err = self._nft.cmd(batch)
        _check(rc, err)

    def apply_text(self, batch: str) -> None:
        """Run a batch in nft syntax (as ``nft -f`` reads it) as one transaction."""
        with self._lock:
            rc, _out, err = self._text.cmd(batch)
        _check(rc, err)

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


def _check(rc: int, err: str) -> None:
    if rc != 0:
        first = " ".join(line.strip() for line in err.strip().splitlines()[:3]) or f"libnftables returned {rc}"
        raise NetworkError(f"nftables refused the change (nothing applied): {first[:500]}")
