"""The network driver interface and the plain objects that cross it.

The agent gets desired networks, NICs and security policies from the control plane and hands them to a
driver: ``bridge`` (Linux bridges, persistent taps and nftables, in ``bridge.py`` and ``nft.py``) or
``fake`` (in memory, for fast tests). Every method is idempotent, so the reconcile loop can call it again
after a crash without first asking what exists. Kernel names are derived from ids (not stored), so an
agent that lost its memory still finds its bridges and taps.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

__all__ = [
    "BRIDGE_PREFIX",
    "IFNAME_MAX",
    "METADATA_ADDRESS",
    "TAP_PREFIX",
    "VLAN_PREFIX",
    "FloatingIp",
    "MetadataTarget",
    "NetworkDriver",
    "NetworkError",
    "NetworkSpec",
    "NicSpec",
    "ObservedNetwork",
    "Rule",
    "SecurityPolicy",
    "bridge_name",
    "tap_name",
    "vlan_interface_name",
]

IFNAME_MAX = 15  # IFNAMSIZ - 1
BRIDGE_PREFIX = "bb-"
TAP_PREFIX = "bt-"  # every tap (and test veth) Bramble filters; unknown ones with it are dropped
VLAN_PREFIX = "bv-"
METADATA_ADDRESS = IPv4Address("169.254.169.254")
_UUID_HEX = re.compile(r"^[0-9a-f]{32}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class NetworkError(RuntimeError):
    """The kernel refused a change; the message says which object and why. Nothing was half-applied."""


def _short(object_id: str) -> str:
    """12 characters from an id: the uuid's first hex digits (readable in ``ip link``), else a hash."""
    compact = object_id.replace("-", "").lower()
    if _UUID_HEX.match(compact):
        return compact[:12]
    return hashlib.sha256(object_id.encode()).hexdigest()[:12]


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + _short(network_id)


def vlan_interface_name(network_id: str) -> str:
    return VLAN_PREFIX + _short(network_id)


def tap_name(nic_id: str) -> str:
    return TAP_PREFIX + _short(nic_id)


def _check_ifname(name: str, what: str) -> None:
    if not _IFNAME.match(name):
        raise ValueError(f"{what} {name!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")


@dataclass(frozen=True)
class MetadataTarget:
    """Where 169.254.169.254:80 from a network's VMs is sent (DNAT): the agent's metadata listener.

    Use the network's gateway address (the bridge holds it) with a port per network, so the listener
    knows the network from the port and the VM from the source address; loopback would need
    ``route_localnet``.
    """

    address: IPv4Address
    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"metadata port {self.port} is outside 1-65535")


@dataclass(frozen=True)
class NetworkSpec:
    """One VM network on one node: a bridge holding the gateway address, optionally NATed or on a VLAN.

    ``uplink`` is a host interface: with ``nat`` the network is masqueraded out of it; with ``vlan`` a
    sub-interface ``uplink.vlan`` (named ``bv-...``) joins the bridge, putting the VMs on that VLAN.
    """

    id: str
    cidr: IPv4Network
    gateway: IPv4Address
    nat: bool = False
    uplink: str | None = None
    vlan: int | None = None
    metadata: MetadataTarget | None = None

    def __post_init__(self) -> None:
        if self.gateway not in self.cidr or self.gateway in (self.cidr.network_address, self.cidr.broadcast_address):
            raise ValueError(f"gateway {self.gateway} is not a host address of {self.cidr}")
        if self.uplink is not None:
            _check_ifname(self.uplink, "uplink")
        if self.vlan is not None:
            if self.uplink is None:
                raise ValueError("a VLAN needs an uplink interface to carry it")
            if not 1 <= self.vlan <= 4094:
                raise ValueError(f"VLAN id {self.vlan} is outside 1-4094")

    @property
    def bridge(self) -> str:
        return bridge_name(self.id)

    @property
    def vlan_interface(self) -> str | None:
        return vlan_interface_name(self.id) if self.vlan is not None else None


@dataclass(frozen=True)
class NicSpec:
    """One VM NIC: a persistent tap on the network's bridge; QEMU opens it by name.

    QEMU: ``-netdev tap,id=n0,ifname=<tap>,script=no,downscript=no,vhost=on -device virtio-net-pci,
    netdev=n0,mac=<mac>``. ``mac`` is the guest's address (the tap's own host-side MAC is irrelevant).
    """

    vm_id: str
    nic_id: str
    mac: str
    ip: IPv4Address
    bridge: str
    tap: str = ""

    def __post_init__(self) -> None:
        if not self.tap:
            object.__setattr__(self, "tap", tap_name(self.nic_id))
        _check_ifname(self.tap, "tap")
        _check_ifname(self.bridge, "bridge")
        if not self.tap.startswith(TAP_PREFIX):
            raise ValueError(f"tap {self.tap!r} must start with {TAP_PREFIX!r} so that the firewall covers it")


Protocol = Literal["any", "tcp", "udp", "icmp"]


@dataclass(frozen=True)
class Rule:
    """One allow rule of a policy, from the VM's point of view (the direction is where it is listed).

    The remote side is a CIDR, or the name of an address set (a security group's members), or anything.
    """

    protocol: Protocol = "any"
    port_min: int | None = None
    port_max: int | None = None
    cidr: IPv4Network | None = None
    remote_set: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in ("any", "tcp", "udp", "icmp"):
            raise ValueError(f"protocol {self.protocol!r} is not one of any, tcp, udp, icmp")
        if self.port_max is not None and self.port_min is None:
            raise ValueError("a port range needs its first port")
        if self.port_min is not None:
            if self.protocol not in ("tcp", "udp"):
                raise ValueError(f"ports need protocol tcp or udp, not {self.protocol}")
            high = self.port_max if self.port_max is not None else self.port_min
            if not 1 <= self.port_min <= high <= 65535:
                raise ValueError(f"port range {self.port_min}-{high} is not within 1-65535 in order")
        if self.cidr is not None and self.remote_set is not None:
            raise ValueError("a rule has a remote CIDR or a remote group, not both")
        if self.remote_set is not None and not re.match(r"^[A-Za-z0-9_-]{1,64}$", self.remote_set):
            raise ValueError(f"address set name {self.remote_set!r} must be 1-64 of A-Z a-z 0-9 _ -")


@dataclass(frozen=True)
class SecurityPolicy:
    """Everything the firewall needs for one tap: who it is (anti-spoofing) and what it may exchange.

    Allow-lists: ``ingress`` is what may reach the VM, ``egress`` what the VM may send; replies to
    allowed connections always pass, anything else is dropped. DHCP and the metadata service are
    always allowed. Frames from the tap with another MAC or IPv4 source, and non-IPv4/ARP frames,
    are dropped.
    """

    tap: str
    bridge: str
    mac: str
    ip: IPv4Address
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        _check_ifname(self.tap, "tap")
        _check_ifname(self.bridge, "bridge")
        if not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", self.mac):
            raise ValueError(f"MAC {self.mac!r} must be lower-case colon form")


@dataclass(frozen=True)
class FloatingIp:
    """A public address on the uplink mapped 1:1 to a VM's private address (DNAT in, SNAT out)."""

    public_ip: IPv4Address
    private_ip: IPv4Address
    bridge: str
    uplink: str | None = None  # gets public_ip/32 so it answers ARP; None when the address is routed to us


@dataclass
class ObservedNetwork:
    """What the node has, for the reconcile loop: Bramble bridges and the taps attached to each."""

    bridges: set[str] = field(default_factory=set)
    taps: dict[str, str | None] = field(default_factory=dict)  # tap -> bridge it is attached to


class NetworkDriver(ABC):
    @abstractmethod
    def ensure_network(self, spec: NetworkSpec) -> None:
        """Bridge up with the gateway address; masquerade, metadata DNAT and the VLAN leg as asked."""

    @abstractmethod
    def remove_network(self, network_id: str) -> None:
        """Remove the bridge, its VLAN leg and its NAT rules; absent parts are fine."""

    @abstractmethod
    def ensure_tap(self, nic: NicSpec) -> None:
        """A persistent tap (TAP, NO_PI, VNET_HDR) attached to ``nic.bridge`` and up."""

    @abstractmethod
    def remove_tap(self, tap: str) -> None:
        """Delete the tap; absent is fine."""

    @abstractmethod
    def apply_security(
        self, policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]
    ) -> None:
        """Replace the whole firewall of all taps in one atomic transaction: all or nothing."""

    @abstractmethod
    def apply_floating_ips(self, floating: Sequence[FloatingIp]) -> None:
        """Replace every floating IP mapping at once."""

    @abstractmethod
    def observe(self) -> ObservedNetwork:
        """The Bramble bridges and taps that exist now."""
