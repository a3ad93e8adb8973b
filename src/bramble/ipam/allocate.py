"""IPv4 address management for VM networks. Pure: data in, decision out, no I/O.

The caller (core, inside ONE write transaction) reads the network, the addresses held by NICs and the
recently freed ones, calls :func:`choose_address` or :func:`check_requested`, and inserts the NIC row in
the same transaction; that transaction (and the unique index on (network, address)) is what makes 50
concurrent creates safe, these functions only make the decision.

Freed addresses are quarantined: an address that a deleted VM held may still sit in ARP caches, DNS
records or other VMs' security-group sets, so it is not handed out again until ``quarantine`` has passed.
Times are compared as aware ``datetime`` objects; a naive one is refused, because comparing times that
are not on the same clock (or, as early Nova did in SQLite, as strings) recycles addresses too early.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError

__all__ = [
    "AddressError",
    "AddressInQuarantine",
    "AddressInUse",
    "AddressNotAssignable",
    "AddressOutsideNetwork",
    "InvalidNetwork",
    "IpamError",
    "NetworkExhausted",
    "Subnet",
    "check_requested",
    "choose_address",
    "parse_network",
    "quarantined",
]

DEFAULT_QUARANTINE = timedelta(minutes=10)
MAX_PREFIX = 30  # network, gateway, broadcast and at least one address for a VM


class IpamError(ValueError):
    """A request IPAM refuses; the message is fit for an HTTP 4xx body."""


class InvalidNetwork(IpamError):
    """A network definition is malformed, too small, overlaps another, or has a bad gateway."""


class AddressError(IpamError):
    """A specific address cannot be given to a NIC."""


class AddressOutsideNetwork(AddressError):
    pass


class AddressNotAssignable(AddressError):
    """The network address, the broadcast address, the gateway or a reserved address."""


class AddressInUse(AddressError):
    pass


class AddressInQuarantine(AddressError):
    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


class NetworkExhausted(IpamError):
    """Every assignable address is held or quarantined."""


@dataclass(frozen=True)
class Subnet:
    """One VM network's address plan: what may be handed to NICs and what never may."""

    cidr: IPv4Network
    gateway: IPv4Address
    reserved: frozenset[IPv4Address] = frozenset()

    def __post_init__(self) -> None:
        if self.cidr.prefixlen > MAX_PREFIX:
            raise InvalidNetwork(f"{self.cidr} is too small: a VM network needs at least a /{MAX_PREFIX}")
        if self.gateway not in self.cidr:
            raise InvalidNetwork(f"gateway {self.gateway} is outside {self.cidr}")
        if self.gateway in (self.cidr.network_address, self.cidr.broadcast_address):
            raise InvalidNetwork(f"gateway {self.gateway} is the network or broadcast address of {self.cidr}")
        outside = sorted(a for a in self.reserved if a not in self.cidr)
        if outside:
            raise InvalidNetwork(f"reserved address {outside[0]} is outside {self.cidr}")

    def unassignable(self, address: IPv4Address) -> str | None:
        """Why ``address`` can never go to a NIC, or None if it can (when free)."""
        if address == self.cidr.network_address:
            return "the network address"
        if address == self.cidr.broadcast_address:
            return "the broadcast address"
        if address == self.gateway:
            return "the gateway"
        if address in self.reserved:
            return "reserved"
        return None


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TypeError(f"{what} must be a timezone-aware datetime, got naive {moment.isoformat()}")
    return moment


def quarantined(
    address: IPv4Address,
    freed: Mapping[IPv4Address, datetime],
    now: datetime,
    quarantine: timedelta = DEFAULT_QUARANTINE,
) -> datetime | None:
    """The moment ``address`` leaves quarantine, or None if it is not (or no longer) quarantined."""
    freed_at = freed.get(address)
    if freed_at is None:
        return None
    until = _aware(freed_at, f"free time of {address}") + quarantine
    return until if _aware(now, "now") < until else None


def check_requested(
    subnet: Subnet,
    requested: IPv4Address | str,
    in_use: Collection[IPv4Address],
    freed: Mapping[IPv4Address, datetime],
    now: datetime,
    quarantine: timedelta = DEFAULT_QUARANTINE,
) -> IPv4Address:
    """Validate a fixed address asked for by the user; return it parsed, or raise an AddressError."""
    try:
        address = IPv4Address(requested) if isinstance(requested, str) else requested
    except AddressValueError:
        raise AddressError(f"{requested!r} is not an IPv4 address") from None
    if address not in subnet.cidr:
        raise AddressOutsideNetwork(f"{address} is outside {subnet.cidr}")
    reason = subnet.unassignable(address)
    if reason:
        raise AddressNotAssignable(f"{address} is {reason} of {subnet.cidr}")
    if address in in_use:
        raise AddressInUse(f"{address} is already in use")
    until = quarantined(address, freed, now, quarantine)
    if until is not None:
        raise AddressInQuarantine(
            f"{address} was freed recently and is quarantined until {until.isoformat()}", until=until
        )
    return address


def choose_address(
    subnet: Subnet,
    in_use: Collection[IPv4Address],
    freed: Mapping[IPv4Address, datetime],
    now: datetime,
    quarantine: timedelta = DEFAULT_QUARANTINE,
) -> IPv4Address:
    """The next address for a NIC.

    Addresses nobody has freed recently come first, lowest first (predictable, easy to read in a
    listing); only when those are gone does an address whose quarantine has passed come back, the one
    freed longest ago first, so that recycling is as slow as the pool allows. ``freed`` needs to hold only
    the recent frees (older ones are treated as never freed); ``in_use`` wins over ``freed``.
    """
    _aware(now, "now")
    recycled: list[tuple[datetime, IPv4Address]] = []
    first, last = int(subnet.cidr.network_address) + 1, int(subnet.cidr.broadcast_address) - 1
    for value in range(first, last + 1):
        address = IPv4Address(value)
        if address in in_use or subnet.unassignable(address):
            continue
        freed_at = freed.get(address)
        if freed_at is None:
            return address
        if quarantined(address, freed, now, quarantine) is None:
            recycled.append((freed_at, address))
    if recycled:
        return min(recycled)[1]
    waiting = [until for a in freed if a not in in_use and (until := quarantined(a, freed, now, quarantine))]
    hint = f"; the first quarantined address is free again at {min(waiting).isoformat()}" if waiting else ""
    raise NetworkExhausted(f"no free address left in {subnet.cidr}{hint}")


def parse_network(
    cidr: str,
    gateway: str | None = None,
    existing: Iterable[IPv4Network] = (),
    reserved: Iterable[str] = (),
) -> Subnet:
    """Validate a new network's definition against the others; the gateway defaults to the first host."""
    try:
        network = IPv4Network(cidr, strict=True)
    except (AddressValueError, NetmaskValueError) as exc:
        raise InvalidNetwork(f"{cidr!r} is not an IPv4 network in CIDR form (like 10.20.0.0/24): {exc}") from None
    except ValueError:
        loose = IPv4Network(cidr, strict=False)
        raise InvalidNetwork(f"{cidr!r} has host bits set; did you mean {loose}?") from None
    if "/" not in cidr:
        raise InvalidNetwork(f"{cidr!r} has no prefix length (like {cidr}/24)")
    for other in existing:
        if network.overlaps(other):
            raise InvalidNetwork(f"{network} overlaps the existing network {other}")
    try:
        gw = IPv4Address(gateway) if gateway is not None else network.network_address + 1
        held = frozenset(IPv4Address(a) for a in reserved)
    except AddressValueError as exc:
        raise InvalidNetwork(f"not an IPv4 address: {exc}") from None
    return Subnet(cidr=network, gateway=gw, reserved=held)
