"""The real network driver: Linux bridges and persistent taps over netlink (pyroute2), nftables for the rest.

It acts on the network namespace of the calling process (the host's, for the agent; a throwaway one
in the tests, which run it under ``ip netns exec``). Link changes are planned first as plain
:class:`LinkStep` objects (pure, unit-tested: that is how the VLAN leg is tested on kernels without
802.1q) and then executed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bramble.network.conntrack import cut_disallowed, cut_floating
from bramble.network.driver import (
    BRIDGE_PREFIX,
    TAP_PREFIX,
    VLAN_PREFIX,
    FloatingIp,
    NetworkDriver,
    NetworkError,
    NetworkSpec,
    NicSpec,
    ObservedNetwork,
    SecurityPolicy,
    bridge_name,
    vlan_interface_name,
)
from bramble.network.nft import (
    Nft,
    SecurityFirewall,
    floating_commands,
    network_nat_commands,
    remove_network_nat_commands,
    security_ruleset,
)

__all__ = ["BridgeDriver", "LinkStep", "bridge_mac", "plan_network"]

log = logging.getLogger(__name__)
TAP_FLAGS = {  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as QEMU's tap backend wants
    "no_pi": 1,
    "one_queue": 0,
    "vnet_hdr": 1,
    "tun_excl": 0,
    "multi_queue": 0,
    "persist": 1,
    "nofilter": 0,
}
BR_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
FIP_LABEL_PROTO = 0xB7  # IFA_PROTO value marking the /32 addresses Bramble put on uplinks


def bridge_mac(network_id: str) -> str:
    """A fixed locally administered MAC for a network's bridge.

    A bridge otherwise takes the lowest MAC of its ports and changes it as taps come and go, which
    makes the VMs' ARP entry for the gateway go stale.
    """
    digest = hashlib.sha256(b"bramble-bridge:" + network_id.encode()).digest()
    return "02:b6:" + ":".join(f"{b:02x}" for b in digest[:4])


@dataclass(frozen=True)
class LinkStep:
    """One netlink change: ``kind`` of link to create (if missing) and the attributes it must have."""

    ifname: str
    kind: str  # bridge | vlan
    attrs: dict[str, Any] = field(default_factory=dict)
    master: str | None = None
    link: str | None = None  # the parent of a vlan
    address: str | None = None  # "a.b.c.d/len" to hold
    mac: str | None = None


def plan_network(spec: NetworkSpec) -> list[LinkStep]:
    """The links for a network, in creation order: the bridge, then the VLAN leg enslaved to it."""
    steps = [
        LinkStep(
            ifname=spec.bridge,
            kind="bridge",
            attrs={"br_stp_state": 0, "br_forward_delay": 0},
            address=f"{spec.gateway}/{spec.cidr.prefixlen}",
            mac=bridge_mac(spec.id),
        )
    ]
    if spec.vlan is not None and spec.uplink is not None:
        steps.append(
            LinkStep(
                ifname=vlan_interface_name(spec.id),
                kind="vlan",
                attrs={"vlan_id": spec.vlan},
                master=spec.bridge,
                link=spec.uplink,
            )
        )
    return steps


def _write_sysctl(path: Path, value: str, hint: str) -> None:
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set {path} to {value}: {exc.strerror} ({hint})") from None


class BridgeDriver(NetworkDriver):
    def __init__(self) -> None:
        self._nft = Nft()
        self.firewall = SecurityFirewall(self._nft)  # security tables: incremental after the first apply
        self._floating_applied: dict[IPv4Address, IPv4Address] | None = None  # public -> private, last applied

    # -- links ------------------------------------------------------------------------------------

    def _index(self, ipr: IPRoute, name: str) -> int | None:
        found = ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def _kind(self, ipr: IPRoute, index: int) -> str | None:
        link = ipr.get_links(index)[0]
        kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        return str(kind) if kind is not None else None

    def _execute(self, ipr: IPRoute, step: LinkStep) -> None:
        index = self._index(ipr, step.ifname)
        if index is not None and self._kind(ipr, index) != step.kind:
            raise NetworkError(f"{step.ifname} exists but is not a {step.kind}; refusing to take it over")
        if index is None:
            extra: dict[str, Any] = dict(step.attrs)
            if step.link is not None:
                parent = self._index(ipr, step.link)
                if parent is None:
                    raise NetworkError(f"uplink {step.link} does not exist")
                extra["link"] = parent
            try:
                ipr.link("add", ifname=step.ifname, kind=step.kind, **extra)
            except NetlinkError as exc:
                if exc.code == errno.EOPNOTSUPP and step.kind == "vlan":
                    raise NetworkError(f"cannot create {step.ifname}: this kernel has no 802.1q support") from None
                raise NetworkError(f"cannot create {step.kind} {step.ifname}: {exc}") from None
            index = self._index(ipr, step.ifname)
            assert index is not None
        changes: dict[str, Any] = {}
        if step.mac is not None:
            changes["address"] = step.mac
        if step.master is not None:
            master = self._index(ipr, step.master)
            if master is None:
                raise NetworkError(f"bridge {step.master} does not exist")
            changes["master"] = master
        if changes:
            ipr.link("set", index=index, **changes)
        ipr.link("set", index=index, state="up")
        if step.address is not None:
            address, prefix = step.address.split("/")
            held = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
            if (address, int(prefix)) not in held:
                ipr.addr("add", index=index, address=address, prefixlen=int(prefix))

    def ensure_network(self, spec: NetworkSpec) -> None:
        if not BR_NETFILTER.exists():
            raise NetworkError("bridged traffic cannot be filtered: br_netfilter is not loaded (modprobe br_netfilter)")
        _write_sysctl(BR_NETFILTER, "1", "security groups filter bridged traffic through br_netfilter")
        if spec.nat:
            _write_sysctl(IP_FORWARD, "1", "NAT needs IPv4 forwarding")
        with IPRoute() as ipr:
            for step in plan_network(spec):
                self._execute(ipr, step)
        self._nft.apply(network_nat_commands(spec))

    def remove_network(self, network_id: str) -> None:
        bridge = bridge_name(network_id)
        self._nft.apply(remove_network_nat_commands(bridge))
        with IPRoute() as ipr:
            for name in (vlan_interface_name(network_id), bridge):
                self._delete_link(ipr, name)

    def _delete_link(self, ipr: IPRoute, name: str) -> None:
        index = self._index(ipr, name)
        if index is None:
            return
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise NetworkError(f"cannot delete {name}: {exc}") from None

    def ensure_tap(self, nic: NicSpec) -> None:
        with IPRoute() as ipr:
            master = self._index(ipr, nic.bridge)
            if master is None:
                raise NetworkError(f"bridge {nic.bridge} does not exist (ensure the network first)")
            index = self._index(ipr, nic.tap)
            if index is None:
                try:
                    ipr.link("add", ifname=nic.tap, kind="tuntap", mode="tap", ifr=TAP_FLAGS)
                except (NetlinkError, OSError) as exc:
                    raise NetworkError(f"cannot create tap {nic.tap}: {exc}") from None
                index = self._index(ipr, nic.tap)
                if index is None:
                    raise NetworkError(f"tap {nic.tap} vanished right after creation")
            ipr.link("set", index=index, master=master, state="up")

    def remove_tap(self, tap: str) -> None:
        with IPRoute() as ipr:
            self._delete_link(ipr, tap)

    # -- nftables ---------------------------------------------------------------------------------

    def apply_security(
        self, policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]
    ) -> None:
        try:
            ruleset = security_ruleset(policies, address_sets)
        except ValueError as exc:
            raise NetworkError(f"invalid security policy (nothing applied): {exc}") from None
        self.firewall.apply(ruleset)  # only the elements that changed, or both tables whole
        if self.firewall.last_removed:  # open connections the rules no longer allow are cut
            try:
                cut_disallowed(policies, address_sets)
            except Exception:  # the rules are in force whatever happens here; only older connections stay
                log.exception("could not check open connections against the new security rules")

    def apply_floating_ips(self, floating: Sequence[FloatingIp]) -> None:
        try:
            commands = floating_commands(floating)
        except ValueError as exc:
            raise NetworkError(f"invalid floating IPs (nothing applied): {exc}") from None
        if floating:  # the public address is DNATed to a VM behind a bridge: the host routes between them
            _write_sysctl(IP_FORWARD, "1", "floating IPs need IPv4 forwarding")
        self._nft.apply(commands)
        detached = self._sync_uplink_addresses(floating)
        mapped = {f.public_ip: f.private_ip for f in floating}
        previous = self._floating_applied
        if detached or previous is None or any(mapped.get(public) != private for public, private in previous.items()):
            try:  # a translation went or changed: the connections made through it go too
                cut_floating(mapped, detached)
            except Exception:  # the translations are gone for new connections whatever happens here
                log.exception("could not cut connections through detached floating IPs")
        self._floating_applied = mapped

    def _sync_uplink_addresses(self, floating: Sequence[FloatingIp]) -> set[IPv4Address]:
        """Each floating IP as a /32 on its uplink (so the host answers ARP for it), none left over;
        returns the addresses removed.

        Our addresses are recognised by their IFA_PROTO mark, so an operator's own /32s are never removed.
        """
        removed: set[IPv4Address] = set()
        wanted = {(f.uplink, str(f.public_ip)) for f in floating if f.uplink is not None}
        with IPRoute() as ipr:
            held: set[tuple[str, str]] = set()
            for addr in ipr.get_addr(family=2):
                if addr.get("IFA_PROTO") != FIP_LABEL_PROTO:
                    continue
                ifname = ipr.get_links(addr["index"])[0].get("IFLA_IFNAME")
                key = (ifname, addr.get("IFA_ADDRESS"))
                if key in wanted:
                    held.add(key)
                else:
                    ipr.addr("del", index=addr["index"], address=key[1], prefixlen=32)
                    removed.add(IPv4Address(key[1]))
            for uplink, address in sorted(wanted - held, key=str):
                index = self._index(ipr, uplink) if uplink else None
                if index is None:
                    raise NetworkError(f"uplink {uplink} for floating IP {address} does not exist")
                ipr.addr("add", index=index, address=address, prefixlen=32, proto=FIP_LABEL_PROTO)
        return removed

    # -- observation ------------------------------------------------------------------------------

    def observe(self) -> ObservedNetwork:
        seen = ObservedNetwork()
        with IPRoute() as ipr:
            links = list(ipr.get_links())
            names = {link["index"]: link.get("IFLA_IFNAME") for link in links}
            for link in links:
                name = link.get("IFLA_IFNAME")
                if name.startswith(BRIDGE_PREFIX):
                    seen.bridges.add(name)
                elif name.startswith(TAP_PREFIX):
                    master = link.get("IFLA_MASTER")
                    seen.taps[name] = names.get(master) if master else None
                elif name.startswith(VLAN_PREFIX):
                    continue
        return seen
