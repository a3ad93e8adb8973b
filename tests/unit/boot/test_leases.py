"""LeaseStore allocation policy, quarantine and persistence, on an injected clock."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bramble.boot.leases import LeaseFileError, LeaseStore, Pool, Reservation

IP = IPv4Address
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pool(**kw: object) -> Pool:
    values: dict[str, object] = {
        "subnet": IPv4Network("10.9.0.0/24"),
        "range_start": IP("10.9.0.0"),
        "range_end": IP("10.9.0.5"),
        "excluded": frozenset({IP("10.9.0.1")}),
        "quarantine_seconds": 600.0,
        "decline_seconds": 3600.0,
    }
    values.update(kw)
    return Pool(**values)  # type: ignore[arg-type]


def test_lowest_free_skips_network_and_excluded_addresses() -> None:
    store = LeaseStore(None, pool(), clock=Clock())
    lease = store.offer(A)
    assert lease is not None and lease.ip == IP("10.9.0.2") and lease.state == "offered"


def test_offers_are_short_reservations() -> None:
    clock = Clock()
    store = LeaseStore(None, pool(offer_seconds=30), clock=clock)
    a, b = store.offer(A), store.offer(B)
    assert a is not None and b is not None and a.ip != b.ip
    clock.now += 31  # A never came back: its offered address is free for others, without quarantine
    c = store.offer(C)
    assert c is not None and c.ip == a.ip


def test_persisted_lease_comes_back_after_restart(tmp_path: Path) -> None:
    path, clock = tmp_path / "leases.json", Clock()
    store = LeaseStore(path, pool(), clock=clock)
    assert store.offer(B) is not None
    assert store.bind(B, IP("10.9.0.2"), 3600, hostname="b") is not None
    again = LeaseStore(path, pool(), clock=clock)
    assert [(lease.mac, lease.ip, lease.state) for lease in again.leases()] == [(B, IP("10.9.0.2"), "bound")]
    other = again.offer(A)
    assert other is not None and other.ip == IP("10.9.0.3")
    mine = again.offer(B)
    assert mine is not None and mine.ip == IP("10.9.0.2")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp files


def test_release_quarantines_against_others_but_not_the_owner() -> None:
    clock = Clock()
    store = LeaseStore(None, pool(), clock=clock)
    assert store.bind(A, IP("10.9.0.2"), 3600) is not None
    assert store.release(A, IP("10.9.0.2"))
    assert not store.release(B, IP("10.9.0.2"))  # only the holder can release
    b = store.offer(B)
    assert b is not None and b.ip == IP("10.9.0.3")
    a = store.offer(A)
    assert a is not None and a.ip == IP("10.9.0.2")


def test_expired_lease_quarantine_counts_from_expiry() -> None:
    clock = Clock()
    store = LeaseStore(None, pool(quarantine_seconds=100), clock=clock)
    assert store.bind(A, IP("10.9.0.2"), 50) is not None
    clock.now += 60  # expired 10 s ago
    assert not store.available(B, IP("10.9.0.2"))
    clock.now += 95
    assert store.available(B, IP("10.9.0.2"))


def test_declined_address_held_longer_even_from_the_decliner() -> None:
    clock = Clock()
    store = LeaseStore(None, pool(quarantine_seconds=10, decline_seconds=100), clock=clock)
    assert store.bind(A, IP("10.9.0.2"), 3600) is not None
    assert store.decline(A, IP("10.9.0.2"))
    a = store.offer(A)
    assert a is not None and a.ip == IP("10.9.0.3")
    clock.now += 50
    assert not store.available(B, IP("10.9.0.2"))
    clock.now += 51
    assert store.available(B, IP("10.9.0.2"))


def test_reservations_are_kept_from_others() -> None:
    res = {"02-00-00-00-00-0A": Reservation(IP("10.9.0.2"), "alpha"), C: Reservation(IP("10.9.0.200"))}
    store = LeaseStore(None, pool(reservations=res), clock=Clock())
    b = store.offer(B, requested=IP("10.9.0.2"))
    assert b is not None and b.ip == IP("10.9.0.3")
    a = store.offer(A)
    assert a is not None and a.ip == IP("10.9.0.2")
    c = store.offer(C)  # outside the dynamic range, still in the subnet
    assert c is not None and c.ip == IP("10.9.0.200")
    assert store.bind(B, IP("10.9.0.200"), 60) is None


def test_bad_pools_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        pool(range_end=IP("10.9.1.5"))
    with pytest.raises(ValueError, match="not a usable address"):
        pool(reservations={A: Reservation(IP("10.9.0.255"))})
    with pytest.raises(ValueError, match="reserved for both"):
        pool(reservations={A: Reservation(IP("10.9.0.9")), B: Reservation(IP("10.9.0.9"))})


def test_exhaustion_returns_none() -> None:
    store = LeaseStore(None, pool(range_start=IP("10.9.0.2"), range_end=IP("10.9.0.3")), clock=Clock())
    assert store.offer(A) is not None and store.offer(B) is not None
    assert store.offer(C) is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"version": 1, "leases": [{"mac": "zz", "ip": "10.9.0.2"}]}',
        b'{"version": 1, "leases": [{"mac": "02:00:00:00:00:0a", "ip": "10.9.0.2", "expires_at": "soon",'
        b' "state": "bound"}]}',
    ],
)
def test_corrupt_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "leases.json"
    path.write_bytes(content)
    with pytest.raises(LeaseFileError, match=r"corrupt lease file .*leases\.json"):
        LeaseStore(path, pool())


def test_file_format_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    store = LeaseStore(path, pool(), clock=Clock(1000.0))
    store.bind(A, IP("10.9.0.4"), 60)
    data = json.loads(path.read_text())
    assert data["leases"][0]["ip"] == "10.9.0.4" and data["leases"][0]["expires_at"] == 1060.0
