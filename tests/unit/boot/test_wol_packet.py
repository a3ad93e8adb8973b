"""Magic packets, MAC parsing and the choice of wake interface, without sockets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bramble.boot.wol import magic_packet, parse_mac, wake_interface_for


@pytest.mark.parametrize(
    "text", ["52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "525400abcdef", "5254.00ab.cdef", " 52:54:00:ab:cd:ef "]
)
def test_mac_forms(text: str) -> None:
    assert parse_mac(text) == bytes.fromhex("525400abcdef")


@pytest.mark.parametrize(
    "text", ["", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:00", "52:54-00:ab:cd:ef", "zz:54:00:ab:cd:ef"]
)
def test_bad_macs(text: str) -> None:
    with pytest.raises(ValueError, match="bad MAC address"):
        parse_mac(text)


@given(st.binary(min_size=6, max_size=6))
def test_magic_packet_layout(raw: bytes) -> None:
    packet = magic_packet(":".join(f"{b:02x}" for b in raw))
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert all(packet[6 + 6 * i : 12 + 6 * i] == raw for i in range(16))


INTERFACES = {"prov0": ["10.0.0.0/16"], "prov1": "10.0.5.1/24", "lab": ["192.168.7.0/24", "fd00::/64"]}


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.0.1.9", "prov0"),
        ("10.0.5.9", "prov1"),  # the more specific subnet wins
        ("192.168.7.200", "lab"),
        ("fd00::5", "lab"),
        ("172.16.0.1", None),
        (None, None),
    ],
)
def test_wake_interface_for(ip: str | None, expected: str | None) -> None:
    assert wake_interface_for(ip, INTERFACES) == expected


def test_single_interface_is_the_default() -> None:
    assert wake_interface_for(None, {"eth1": ["10.1.0.0/24"]}) == "eth1"
    assert wake_interface_for("8.8.8.8", {"eth1": ["10.1.0.0/24"]}) == "eth1"
    assert wake_interface_for(None, {}) is None


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="bad IP address"):
        wake_interface_for("10.0.0.300", INTERFACES)
    with pytest.raises(ValueError, match="bad subnet"):
        wake_interface_for("10.0.0.1", {"x": ["10.0.0.0/33"]})


@given(st.ip_addresses(v=4), st.integers(8, 30), st.integers(8, 30))
def test_most_specific_match_wins(address: ipaddress.IPv4Address, a: int, b: int) -> None:
    wide = ipaddress.ip_network(f"{address}/{min(a, b)}", strict=False)
    narrow = ipaddress.ip_network(f"{address}/{max(a, b)}", strict=False)
    chosen = wake_interface_for(str(address), {"wide": [str(wide)], "narrow": [str(narrow)]})
    assert chosen == ("narrow" if narrow.prefixlen > wide.prefixlen else "wide")
