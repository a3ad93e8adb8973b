"""IPAM decisions: properties over random networks, holders and free times, plus the named error cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bramble.ipam import (
    AddressError,
    AddressInQuarantine,
    AddressInUse,
    AddressNotAssignable,
    AddressOutsideNetwork,
    InvalidNetwork,
    NetworkExhausted,
    Subnet,
    check_requested,
    choose_address,
    parse_network,
    quarantined,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
Q = timedelta(minutes=10)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Subnet, set[IPv4Address], dict[IPv4Address, datetime]]:
    prefix = draw(st.integers(min_value=24, max_value=30))
    base = draw(st.integers(min_value=0, max_value=2**32 - 1)) >> (32 - prefix) << (32 - prefix)
    cidr = IPv4Network((base, prefix))
    hosts = list(cidr.hosts())
    gateway = draw(st.sampled_from(hosts))
    reserved = draw(st.sets(st.sampled_from(hosts), max_size=3))
    in_use = draw(st.sets(st.sampled_from(hosts), max_size=len(hosts)))
    freed_addrs = draw(st.sets(st.sampled_from(hosts), max_size=len(hosts)))
    # free times on either side of the quarantine edge, in assorted time zones
    freed = {
        a: (NOW - draw(st.integers(min_value=0, max_value=1200)) * timedelta(seconds=1)).astimezone(
            timezone(timedelta(hours=draw(st.integers(min_value=-12, max_value=14))))
        )
        for a in freed_addrs
    }
    return Subnet(cidr, gateway, frozenset(reserved - {gateway})), in_use, freed


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_chosen_address_is_assignable_free_and_out_of_quarantine(
    case: tuple[Subnet, set[IPv4Address], dict[IPv4Address, datetime]],
) -> None:
    subnet, in_use, freed = case
    try:
        chosen = choose_address(subnet, in_use, freed, NOW, Q)
    except NetworkExhausted:
        for host in subnet.cidr.hosts():
            with pytest.raises(AddressError):
                check_requested(subnet, host, in_use, freed, NOW, Q)
        return
    assert chosen in subnet.cidr
    assert chosen not in in_use
    assert subnet.unassignable(chosen) is None
    assert quarantined(chosen, freed, NOW, Q) is None
    assert check_requested(subnet, chosen, in_use, freed, NOW, Q) == chosen
    if chosen in freed:  # recycling only when nothing never-freed is left
        fresh = [h for h in subnet.cidr.hosts() if h not in in_use and not subnet.unassignable(h) and h not in freed]
        assert fresh == []


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=24, max_value=30), st.integers(min_value=0, max_value=200))
def test_allocating_until_exhaustion_never_repeats(prefix: int, offset: int) -> None:
    subnet = parse_network(f"10.{offset}.0.0/{prefix}")
    taken: set[IPv4Address] = set()
    while True:
        try:
            address = choose_address(subnet, taken, {}, NOW)
        except NetworkExhausted:
            break
        assert address not in taken
        taken.add(address)
    assert len(taken) == subnet.cidr.num_addresses - 3  # network, gateway, broadcast


def test_quarantine_compares_instants_not_strings() -> None:
    """Freed 5 minutes ago, stored in UTC-05:00: as text its quarantine end ("07:05-05:00") sorts before
    "12:00+00:00", so a string comparison (early Nova on SQLite) recycles it at once; as instants it is
    still quarantined for 5 minutes."""
    subnet = parse_network("10.9.0.0/29")
    freed_at = (NOW - timedelta(minutes=5)).astimezone(timezone(timedelta(hours=-5)))
    assert (freed_at + Q).isoformat() < NOW.isoformat()  # the string comparison says "expired"
    address = IPv4Address("10.9.0.2")
    with pytest.raises(AddressInQuarantine) as err:
        check_requested(subnet, address, set(), {address: freed_at}, NOW, Q)
    assert err.value.until == NOW + timedelta(minutes=5)
    assert choose_address(subnet, set(), {address: freed_at}, NOW, Q) == IPv4Address("10.9.0.3")
    # freed 10 min 1 s ago, stored in UTC+14:00 (sorts after "now" as text): out of quarantine
    old = (NOW - Q - timedelta(seconds=1)).astimezone(timezone(timedelta(hours=14)))
    assert old.isoformat() > NOW.isoformat()
    assert check_requested(subnet, address, set(), {address: old}, NOW, Q) == address


def test_naive_times_are_refused() -> None:
    subnet = parse_network("10.9.0.0/29")
    address = IPv4Address("10.9.0.2")
    with pytest.raises(TypeError, match="timezone-aware"):
        check_requested(subnet, address, set(), {address: datetime(2025, 3, 1, 11, 55)}, NOW, Q)
    with pytest.raises(TypeError, match="timezone-aware"):
        choose_address(subnet, set(), {}, datetime(2025, 3, 1, 12, 0))


def test_recycles_the_address_freed_longest_ago_when_only_recycled_ones_are_left() -> None:
    subnet = parse_network("10.9.0.0/29")  # hosts .1 (gateway) .. .6
    hosts = [IPv4Address(f"10.9.0.{i}") for i in range(2, 7)]
    freed = {
        hosts[0]: NOW - timedelta(hours=1),
        hosts[1]: NOW - timedelta(hours=3),
        hosts[2]: NOW - timedelta(minutes=1),
    }
    in_use = set(hosts[3:])
    assert choose_address(subnet, in_use, freed, NOW, Q) == hosts[1]
    everything_recent = {h: NOW - timedelta(minutes=1) for h in hosts[:3]}
    with pytest.raises(NetworkExhausted, match="free again at 2025-03-01T12:09:00"):
        choose_address(subnet, in_use, everything_recent, NOW, Q)


@pytest.mark.parametrize(
    ("requested", "error", "message"),
    [
        ("10.9.1.5", AddressOutsideNetwork, "outside 10.9.0.0/24"),
        ("10.9.0.0", AddressNotAssignable, "the network address"),
        ("10.9.0.255", AddressNotAssignable, "the broadcast address"),
        ("10.9.0.1", AddressNotAssignable, "the gateway"),
        ("10.9.0.200", AddressNotAssignable, "reserved"),
        ("10.9.0.7", AddressInUse, "already in use"),
        ("10.9.0.8", AddressInQuarantine, "quarantined until"),
        ("10.9.0.300", AddressError, "not an IPv4 address"),
    ],
)
def test_requested_address_errors(requested: str, error: type[Exception], message: str) -> None:
    subnet = parse_network("10.9.0.0/24", reserved=["10.9.0.200"])
    freed = {IPv4Address("10.9.0.8"): NOW - timedelta(minutes=1)}
    with pytest.raises(error, match=message):
        check_requested(subnet, requested, {IPv4Address("10.9.0.7")}, freed, NOW, Q)


@pytest.mark.parametrize(
    ("cidr", "gateway", "message"),
    [
        ("10.9.0.0/33", None, "not an IPv4 network"),
        ("banana", None, "not an IPv4 network"),
        ("10.9.0.5/24", None, "host bits set; did you mean 10.9.0.0/24"),
        ("10.9.0.0", None, "no prefix length"),
        ("10.9.0.0/31", None, "too small"),
        ("10.9.0.0/24", "10.9.1.1", "outside"),
        ("10.9.0.0/24", "10.9.0.255", "broadcast"),
        ("10.9.0.0/24", "10.9.0.x", "not an IPv4 address"),
        ("10.20.128.0/17", None, "overlaps the existing network 10.20.0.0/16"),
    ],
)
def test_network_definition_errors(cidr: str, gateway: str | None, message: str) -> None:
    with pytest.raises(InvalidNetwork, match=message):
        parse_network(cidr, gateway, existing=[IPv4Network("10.20.0.0/16"), IPv4Network("192.168.5.0/24")])


def test_network_defaults_gateway_to_first_host_and_allows_neighbours() -> None:
    subnet = parse_network("10.21.0.0/16", existing=[IPv4Network("10.20.0.0/16")])
    assert subnet.gateway == IPv4Address("10.21.0.1")
    assert choose_address(subnet, set(), {}, NOW) == IPv4Address("10.21.0.2")
