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
    assert not store.available(C, a.ip)
    clock.now += 31  # A never came back: its offered address is free for others, without quarantine
    assert store.available(C, a.ip)


def test_addresses_are_handed_out_round_robin() -> None:
    """Freed addresses rest while never-used ones remain: the next offer continues after the last one."""
    store = LeaseStore(None, pool(range_start=IP("10.9.0.2"), range_end=IP("10.9.0.4"), quarantine_seconds=0))
    first = store.offer(A)
    assert first is not None and first.ip == IP("10.9.0.2")
    assert store.bind(A, first.ip, 3600) is not None and store.release(A, first.ip)
    b = store.offer(B)
    c = store.offer(C)
    assert b is not None and c is not None and (b.ip, c.ip) == (IP("10.9.0.3"), IP("10.9.0.4"))
    d = store.offer("02:00:00:00:00:0d")
    assert d is not None and d.ip == IP("10.9.0.2")  # wrapped around to the freed address


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


def test_file_format_is_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    store = LeaseStore(path, pool(), clock=Clock(1000.0))
    store.bind(A, IP("10.9.0.4"), 60, hostname='odd "name"')
    store.release(A, IP("10.9.0.4"))
    header, bound, released = (json.loads(line) for line in path.read_text().splitlines())
    assert header["version"] == 2
    assert bound["ip"] == "10.9.0.4" and bound["expires_at"] == 1060.0 and bound["hostname"] == 'odd "name"'
    assert released["state"] == "released" and released["free_since"] == 1000.0


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    path, clock = tmp_path / "leases.json", Clock()
    store = LeaseStore(path, pool(), clock=clock)
    store.bind(A, IP("10.9.0.2"), 3600)
    store.bind(B, IP("10.9.0.3"), 3600)
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: -len(data.splitlines()[-1]) // 2 - 1])  # B's line torn halfway by a crash
    again = LeaseStore(path, pool(), clock=clock)
    assert [(lease.mac, lease.ip) for lease in again.leases()] == [(A, IP("10.9.0.2"))]
    assert again.bind(C, IP("10.9.0.4"), 3600) is not None
    again.close()
    third = LeaseStore(path, pool(), clock=clock)  # the new line did not land on the torn one
    assert [lease.mac for lease in third.leases()] == [A, C]


def test_corrupt_line_in_the_middle_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    store = LeaseStore(path, pool(), clock=Clock())
    store.bind(A, IP("10.9.0.2"), 3600)
    store.bind(B, IP("10.9.0.3"), 3600)
    store.close()
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"bound"', '"sideways"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LeaseFileError, match=r"corrupt lease file .*leases\.json line 2: unknown lease state"):
        LeaseStore(path, pool())


def test_compaction_keeps_every_lease_and_shrinks_the_journal(tmp_path: Path) -> None:
    path, clock = tmp_path / "leases.json", Clock()
    big = pool(subnet=IPv4Network("10.9.0.0/22"), range_start=IP("10.9.0.2"), range_end=IP("10.9.3.250"))
    store = LeaseStore(path, big, clock=clock, compact_min_records=100)
    macs = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(300)]
    for round_ in range(3):  # 900 binding changes of 300 clients: several compactions (forked)
        for mac in macs:
            offer = store.offer(mac)
            assert offer is not None and store.bind(mac, offer.ip, 3600 + round_) is not None
    expected = {(lease.mac, lease.ip, lease.expires_at) for lease in store.leases()}
    assert (tmp_path / "leases.json.2").exists()  # at least one compaction ran by itself
    store.compact()  # and one more, waited for: the snapshot is everything, the journal empty
    store.close()
    assert not (tmp_path / "leases.json.1").exists() and not list(tmp_path.glob(".*.tmp"))
    assert len((tmp_path / "leases.json.2").read_text().splitlines()) == 1 + 300
    assert len(path.read_text().splitlines()) == 1
    again = LeaseStore(path, big, clock=clock)
    assert {(lease.mac, lease.ip, lease.expires_at) for lease in again.leases()} == expected
    assert len(expected) == 300


def test_interrupted_compaction_is_replayed(tmp_path: Path) -> None:
    """A crash between rotation and snapshot leaves .1 next to an older .2: both are replayed, in order."""
    path, clock = tmp_path / "leases.json", Clock()
    store = LeaseStore(path, pool(), clock=clock)
    store.bind(A, IP("10.9.0.2"), 3600)
    store.close()
    path.rename(tmp_path / "leases.json.2")
    store = LeaseStore(path, pool(), clock=clock)
    store.release(A, IP("10.9.0.2"))
    store.close()
    path.rename(tmp_path / "leases.json.1")
    store = LeaseStore(path, pool(), clock=clock)
    store.bind(B, IP("10.9.0.3"), 3600)
    store.close()
    again = LeaseStore(path, pool(), clock=clock)
    assert [(lease.mac, lease.state) for lease in again.leases()] == [(A, "released"), (B, "bound")]


def test_version_1_file_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    record = {"mac": A, "ip": "10.9.0.2", "expires_at": 2e9, "state": "bound", "free_since": None}
    path.write_text(json.dumps({"version": 1, "leases": [record]}, indent=1))
    store = LeaseStore(path, pool(), clock=Clock())
    assert [lease.mac for lease in store.leases()] == [A]
    store.bind(B, IP("10.9.0.3"), 3600)
    store.close()
    assert [lease.mac for lease in LeaseStore(path, pool(), clock=Clock()).leases()] == [A, B]
