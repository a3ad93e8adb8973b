"""DHCPv4 lease store for one subnet/range, persisted as an append-only journal.

The store owns the allocation policy (reservation, then the client's previous address, then its
requested one, then the next free address after the last one handed out) so that the DHCP decision code
never picks addresses itself. Freed addresses are quarantined before another client gets them: a machine
that was just shut down may still be referenced by DNS, ARP caches or firewall rules, and handing its
address to a stranger at once is how traffic reaches the wrong host. Handing out addresses round-robin
(like Kea's iterative allocator) lets freed ones rest even longer. Offers are short reservations so that
two concurrent DISCOVERs never get the same address. All times are float epoch seconds.

Persistence is Kea memfile + LFC in miniature: every binding change appends one JSON line to the lease
file (a write, no fsync: a crashed process loses nothing, a power cut up to ``sync_seconds``). When the
journal has grown to several times the live leases it is compacted without stopping the server: the
file is rotated to ``<path>.1``, and a forked child writes the state as of the fork to ``<path>.2`` (temp
file, fsync, rename) and removes ``<path>.1``. Loading replays ``.2``, ``.1`` and the live file in order,
the last record for an address wins, and a torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from socket import inet_ntoa
from typing import Any, Literal, get_args

__all__ = ["Lease", "LeaseFileError", "LeaseState", "LeaseStore", "Pool", "Reservation", "normalise_mac"]

log = logging.getLogger(__name__)

LeaseState = Literal["offered", "bound", "released", "expired", "declined"]
_STATES: tuple[str, ...] = get_args(LeaseState)
_ACTIVE = ("offered", "bound")
_FILE_VERSION = 2
_HEADER = b'{"version": 2, "format": "bramble-dhcp-leases"}\n'
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


class LeaseFileError(Exception):
    """The lease file cannot be read or written; the message names the path so operators can act."""


def normalise_mac(mac: str) -> str:
    """Lower-case colon form, so reservations typed as ``AA-BB-..`` match packets' ``aa:bb:..``."""
    if _MAC.fullmatch(mac):
        return mac  # the form packets already have: the per-packet fast path
    parts = mac.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return ":".join(parts)


@dataclass(frozen=True)
class Reservation:
    """A fixed address (and optional hostname) for one MAC; may lie outside the dynamic range."""

    ip: IPv4Address
    hostname: str | None = None


@dataclass
class Lease:
    """The latest holder of one address. ``free_since`` starts the quarantine (None: free at once)."""

    mac: str
    ip: IPv4Address
    expires_at: float
    state: LeaseState
    hostname: str | None = None
    client_id: str | None = None  # hex of option 61
    free_since: float | None = None

    def active(self, now: float) -> bool:
        return self.state in _ACTIVE and self.expires_at > now


@dataclass(frozen=True)
class Pool:
    """What the store may hand out: ``range_start..range_end`` inside ``subnet``, plus reservations.

    Without a range only the reservations are handed out (addresses decided elsewhere, e.g. by IPAM).
    """

    subnet: IPv4Network
    range_start: IPv4Address | None = None
    range_end: IPv4Address | None = None
    excluded: frozenset[IPv4Address] = frozenset()  # the server, the router, anything else in use
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    quarantine_seconds: float = 600.0
    decline_seconds: float = 3600.0  # RFC 2131 3.1.5: a declined address is in use by someone unknown
    offer_seconds: float = 30.0
    # Integer views for the per-packet path (IPv4Address comparisons and hashes are Python-level calls).
    _reserved_ips: Mapping[int, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _bounds: tuple[int, int, int, int, frozenset[int]] = field(
        default=(0, -1, 0, 0, frozenset()), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if (self.range_start is None) != (self.range_end is None):
            raise ValueError("a range needs both range_start and range_end")
        if self.range_start is not None and self.range_end is not None:
            if not self.range_start <= self.range_end:
                raise ValueError(f"empty range {self.range_start}..{self.range_end}")
            for addr in (self.range_start, self.range_end):
                if addr not in self.subnet:
                    raise ValueError(f"range address {addr} is outside {self.subnet}")
        unusable = {int(ip) for ip in self.excluded}
        if self.subnet.prefixlen < 31:
            unusable |= {int(self.subnet.network_address), int(self.subnet.broadcast_address)}
        start = int(self.range_start) if self.range_start is not None else 0
        end = int(self.range_end) if self.range_end is not None else -1
        bounds = (start, end, int(self.subnet.network_address), int(self.subnet.netmask), frozenset(unusable))
        object.__setattr__(self, "_bounds", bounds)
        object.__setattr__(self, "reservations", {normalise_mac(m): r for m, r in self.reservations.items()})
        seen: dict[IPv4Address, str] = {}
        for mac, res in self.reservations.items():
            if res.ip not in self.subnet or not self.usable(res.ip):
                raise ValueError(f"reservation {res.ip} for {mac} is not a usable address of {self.subnet}")
            if res.ip in seen:
                raise ValueError(f"{res.ip} is reserved for both {seen[res.ip]} and {mac}")
            seen[res.ip] = mac
        object.__setattr__(self, "_reserved_ips", {int(ip): mac for ip, mac in seen.items()})

    def usable(self, ip: IPv4Address) -> bool:
        """Never the network/broadcast address or an excluded one (e.g. our own)."""
        return self.usable_int(int(ip))

    def usable_int(self, value: int) -> bool:
        _, _, network, mask, unusable = self._bounds
        return value & mask == network and value not in unusable

    def in_range(self, ip: IPv4Address) -> bool:
        return self.in_range_int(int(ip))

    def in_range_int(self, value: int) -> bool:
        start, end, network, mask, unusable = self._bounds
        return start <= value <= end and value & mask == network and value not in unusable

    def reserved_for(self, ip: IPv4Address) -> str | None:
        return self._reserved_ips.get(int(ip))


class LeaseStore:
    """Leases of one pool, keyed by address and indexed by MAC; binding changes go to the journal at ``path``.

    Offers are kept in memory only: they last seconds, and writing them would double the file traffic.
    Internally addresses are ints: this is the per-packet path.
    """

    def __init__(
        self,
        path: Path | None,
        pool: Pool,
        *,
        clock: Callable[[], float] = time.time,
        sync_seconds: float = 1.0,
        compact_min_records: int = 50_000,
    ) -> None:
        self.path, self.pool, self._clock = path, pool, clock
        self._by_ip: dict[int, Lease] = {}
        self._by_mac: dict[str, dict[int, None]] = {}  # an ordered set of addresses per client
        self._cursor = int(pool.range_start) if pool.range_start is not None else 0
        self._journal = None if path is None else _Journal(path, sync_seconds, compact_min_records)
        if self._journal is not None:
            for record in self._journal.load():
                if isinstance(record, Lease):
                    self._put(record)
                else:
                    self._remove(int(record))
            self._journal.open(len(self._by_ip))

    def compact(self) -> None:
        """Compact the journal now and wait for it (normally it happens by itself as the journal grows)."""
        if self._journal is not None:
            self._journal.compact_now(self._persistent_leases, len(self._by_ip))

    def close(self) -> None:
        """Flush the journal to disk and wait for a running compaction; writes fail afterwards."""
        if self._journal is not None:
            self._journal.close()

    # -- queries -------------------------------------------------------------------------------

    def leases(self) -> Iterator[Lease]:
        return iter(sorted(self._by_ip.values(), key=lambda lease: int(lease.ip)))

    def get(self, ip: IPv4Address) -> Lease | None:
        return self._by_ip.get(int(ip))

    def lease_of(self, mac: str, now: float | None = None) -> Lease | None:
        """The client's most recent lease record (any state), refreshed for expiry."""
        return self._lease_of(normalise_mac(mac), self._now(now))

    def available(self, mac: str, ip: IPv4Address, now: float | None = None) -> bool:
        """May ``ip`` be given to ``mac`` now? Pool membership, reservations, holders and quarantine."""
        return self._available(normalise_mac(mac), int(ip), self._now(now))

    # -- allocation ----------------------------------------------------------------------------

    def offer(
        self,
        mac: str,
        *,
        requested: IPv4Address | None = None,
        client_id: bytes | None = None,
        hostname: str | None = None,
        now: float | None = None,
    ) -> Lease | None:
        """Reserve an address for ``offer_seconds``; None when the pool is exhausted."""
        now = self._now(now)
        mac = normalise_mac(mac)
        value = self._choose(mac, None if requested is None else int(requested), now)
        if value is None:
            return None
        lease = self._by_ip.get(value)
        if lease is not None and lease.mac == mac and lease.state == "bound" and lease.active(now):
            return lease  # already bound (e.g. a reboot that starts with DISCOVER): keep the binding
        free_since = lease.free_since if lease is not None and lease.mac == mac else None
        self._drop_other_offers(mac, value)
        ip = lease.ip if lease is not None else IPv4Address(value)
        new = Lease(mac, ip, now + self.pool.offer_seconds, "offered", hostname, _hex(client_id), free_since)
        self._put(new)
        return new

    def bind(
        self,
        mac: str,
        ip: IPv4Address,
        lease_seconds: float,
        *,
        client_id: bytes | None = None,
        hostname: str | None = None,
        now: float | None = None,
    ) -> Lease | None:
        """Bind (or extend) ``ip`` for ``mac``; None when the address is not available to this client."""
        now = self._now(now)
        mac = normalise_mac(mac)
        value = int(ip)
        if not self._available(mac, value, now):
            return None
        self._drop_other_offers(mac, value)
        for other_value in list(self._by_mac.get(mac, ())):
            other = self._by_ip[other_value]
            # One bound address per client: a client that moved releases its old one (with quarantine).
            if other_value != value and other.active(now):
                other.state, other.expires_at, other.free_since = "released", now, now
                self._write(other)
        lease = Lease(mac, ip, now + lease_seconds, "bound", hostname, _hex(client_id), None)
        self._put(lease)
        self._write(lease)
        return lease

    def cancel_offer(self, mac: str, now: float | None = None) -> None:
        """The client chose another server (RFC 2131 3.1.4): our offer is free again at once."""
        self._drop_other_offers(normalise_mac(mac), None)

    def release(self, mac: str, ip: IPv4Address, now: float | None = None) -> bool:
        """Client RELEASE: only the holder can free an address; starts the quarantine."""
        return self._free(mac, ip, "released", now)

    def decline(self, mac: str, ip: IPv4Address, now: float | None = None) -> bool:
        """Client DECLINE: someone else answers ARP for ``ip``; hold it for ``decline_seconds``."""
        return self._free(mac, ip, "declined", now)

    def set_pool(self, pool: Pool, now: float | None = None) -> None:
        """Swap the pool (new reservations); leases on addresses now reserved for someone else end."""
        self.pool = pool
        for value, lease in list(self._by_ip.items()):
            owner = pool.reserved_for(lease.ip)
            if owner is not None and owner != lease.mac:
                self._remove(value)  # IPAM moved this address: its decision wins, no quarantine
                if lease.state != "offered":
                    self._write_deleted(lease.ip)
        start, end = pool.range_start, pool.range_end
        if start is not None and end is not None and not int(start) <= self._cursor <= int(end):
            self._cursor = int(start)

    # -- internals -----------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _put(self, lease: Lease) -> None:
        value = int(lease.ip)
        old = self._by_ip.get(value)
        if old is not None and old.mac != lease.mac:
            self._unindex(old.mac, value)
        self._by_ip[value] = lease
        ips = self._by_mac.get(lease.mac)
        if ips is None:
            self._by_mac[lease.mac] = {value: None}
        else:
            ips[value] = None

    def _remove(self, value: int) -> None:
        old = self._by_ip.pop(value, None)
        if old is not None:
            self._unindex(old.mac, value)

    def _unindex(self, mac: str, value: int) -> None:
        ips = self._by_mac.get(mac)
        if ips is not None:
            ips.pop(value, None)
            if not ips:
                del self._by_mac[mac]

    def _lease_of(self, mac: str, now: float) -> Lease | None:
        best: Lease | None = None
        for value in self._by_mac.get(mac, ()):
            lease = self._by_ip[value]
            self._expire(lease, now)
            if best is None or (lease.state in _ACTIVE, lease.expires_at) > (best.state in _ACTIVE, best.expires_at):
                best = lease
        return best

    def _available(self, mac: str, value: int, now: float) -> bool:
        pool = self.pool
        res = pool.reservations.get(mac) if pool.reservations else None
        if res is None or int(res.ip) != value:
            if pool._reserved_ips and value in pool._reserved_ips:
                return False  # reserved for another MAC
            if res is not None:
                return False  # a reserved client gets its reservation only
            if not pool.in_range_int(value):
                return False
        lease = self._by_ip.get(value)
        if lease is None:
            return True
        self._expire(lease, now)
        if lease.state == "declined":
            return lease.free_since is None or now >= lease.free_since + pool.decline_seconds
        if lease.mac == mac:
            return True
        if lease.active(now):
            return False
        return lease.free_since is None or now >= lease.free_since + pool.quarantine_seconds

    def _expire(self, lease: Lease, now: float) -> None:
        if lease.state in _ACTIVE and lease.expires_at <= now:
            if lease.state == "bound":
                lease.free_since = lease.expires_at
            lease.state = "expired"  # an unanswered offer keeps its free_since: nobody used it

    def _choose(self, mac: str, requested: int | None, now: float) -> int | None:
        res = self.pool.reservations.get(mac) if self.pool.reservations else None
        if res is not None:
            value = int(res.ip)
            return value if self._available(mac, value, now) else None
        previous = self._lease_of(mac, now)
        if previous is not None and self._available(mac, int(previous.ip), now):
            return int(previous.ip)
        if requested is not None and self._available(mac, requested, now):
            return requested
        if self.pool.range_start is None or self.pool.range_end is None:
            return None
        start, end = int(self.pool.range_start), int(self.pool.range_end)
        value = self._cursor if start <= self._cursor <= end else start
        for _ in range(end - start + 1):
            candidate = value
            value = value + 1 if value < end else start
            if self._available(mac, candidate, now):
                self._cursor = value
                return candidate
        return None

    def _drop_other_offers(self, mac: str, keep: int | None) -> None:
        ips = self._by_mac.get(mac)
        if not ips:
            return
        for value in list(ips):
            lease = self._by_ip[value]
            if lease.state == "offered" and value != keep:
                if lease.free_since is None:
                    self._remove(value)
                else:  # back to the released record it replaced, quarantine intact
                    lease.state, lease.expires_at = "released", lease.free_since

    def _free(self, mac: str, ip: IPv4Address, state: LeaseState, now: float | None) -> bool:
        now = self._now(now)
        mac = normalise_mac(mac)
        lease = self._by_ip.get(int(ip))
        if state == "declined" and (lease is None or lease.mac != mac) and self.pool.in_range(ip):
            # A DECLINE for an address we did not record (e.g. after losing the file) still quarantines it.
            if lease is None or not lease.active(now):
                new = Lease(mac, ip, now, "declined", free_since=now)
                self._put(new)
                self._write(new)
                return True
            return False
        if lease is None or lease.mac != mac:
            return False
        self._expire(lease, now)
        if lease.state == "declined":
            return False
        lease.state, lease.expires_at, lease.free_since = state, now, now
        self._write(lease)
        return True

    def _write(self, lease: Lease) -> None:
        if self._journal is not None:
            self._journal.append(_line(lease), self._persistent_leases, len(self._by_ip))

    def _write_deleted(self, ip: IPv4Address) -> None:
        if self._journal is not None:
            line = b'{"ip": "%s", "state": "deleted"}\n' % str(ip).encode()
            self._journal.append(line, self._persistent_leases, len(self._by_ip))

    def _persistent_leases(self) -> Iterator[Lease]:
        return (lease for lease in self._by_ip.values() if lease.state != "offered")


# -- the journal ------------------------------------------------------------------------------


class _Journal:
    """The append-only lease file plus its compaction (rotation + a forked snapshot writer)."""

    def __init__(self, path: Path, sync_seconds: float, compact_min_records: int) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.snapshot = path.with_name(path.name + ".2")
        self._sync_seconds, self._compact_min = sync_seconds, compact_min_records
        self._fd: int | None = None
        self._records = 0  # lines in the live file
        self._live = 0  # persistent leases at the last compaction (or load)
        self._last_sync = time.monotonic()
        self._dirty = False
        self._child: int | None = None

    # loading

    def load(self) -> Iterator[Lease | IPv4Address]:
        """Every record of ``.2``, ``.1`` and the live file, in order; deleted addresses as bare addresses."""
        for part in (self.snapshot, self.rotated, self.path):
            if part.exists():
                yield from self._load_file(part)

    def _load_file(self, path: Path) -> Iterator[Lease | IPv4Address]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LeaseFileError(f"cannot read lease file {path}: {exc.strerror}") from exc
        if data.lstrip().startswith(b"{\n") or data.startswith(b'{"version": 1'):
            yield from _load_version_1(path, data)  # the whole-file JSON of earlier releases
            return
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if not lines and not _HEADER.startswith(torn):
            raise LeaseFileError(f"corrupt lease file {path} line 1: not a Bramble lease file header")
        if torn:
            log.warning("dhcp: ignoring a torn last line in lease file %s (a crash mid-write)", path)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if number == 1:
                    if not isinstance(record, dict) or record.get("version") != _FILE_VERSION:
                        raise ValueError(f"expected a header with version {_FILE_VERSION}")
                    continue
                if isinstance(record, dict) and record.get("state") == "deleted":
                    yield IPv4Address(record["ip"])
                else:
                    yield _lease_from(record)
            except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
                raise LeaseFileError(f"corrupt lease file {path} line {number}: {exc}") from exc

    def open(self, live_leases: int) -> None:
        """Open the live file for appending; a torn tail is cut off first so new lines start clean."""
        self._live = live_leases
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                data = self.path.read_bytes()
                if data.lstrip().startswith(b"{\n") or data.startswith(b'{"version": 1'):
                    self._rotate_to_snapshot_later(data)
                elif not data.endswith(b"\n"):
                    with open(self.path, "r+b") as fh:
                        fh.truncate(data.rfind(b"\n") + 1)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            if os.fstat(fd).st_size == 0:
                os.write(fd, _HEADER)
                self._records = 0
            else:
                with open(self.path, "rb") as fh:
                    self._records = max(sum(1 for _ in fh) - 1, 0)
        except OSError as exc:
            raise LeaseFileError(f"cannot open lease file {self.path}: {exc.strerror}") from exc
        self._fd = fd

    def _rotate_to_snapshot_later(self, data: bytes) -> None:
        """A version-1 file becomes the rotated part; the first compaction turns it into a snapshot."""
        if self.rotated.exists():
            raise LeaseFileError(f"lease file {self.path} is in the old format but {self.rotated} exists too")
        os.replace(self.path, self.rotated)

    # writing

    def append(self, line: bytes, current: Callable[[], Iterator[Lease]], count: int) -> None:
        """Append one record; ``current`` yields the persistent leases, ``count`` is about how many."""
        if self._fd is None:
            raise LeaseFileError(f"lease file {self.path} is closed")
        try:
            os.write(self._fd, line)
        except OSError as exc:
            raise LeaseFileError(f"cannot write lease file {self.path}: {exc.strerror}") from exc
        self._records += 1
        self._dirty = True
        now = time.monotonic()
        if now - self._last_sync >= self._sync_seconds:
            self._sync(now)
        if self._records >= max(self._compact_min, 2 * self._live):
            self._compact(current, count)

    def _sync(self, now: float) -> None:
        if self._fd is not None and self._dirty:
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)
        self._last_sync, self._dirty = now, False
        self._reap(block=False)

    def _compact(self, current: Callable[[], Iterator[Lease]], count: int) -> None:
        """Rotate the live file and let a child process write the snapshot; the server keeps answering.

        The child has a copy-on-write image of the leases as of the fork, so the parent neither copies
        nor serialises anything (like Redis's BGSAVE); Kea runs its LFC as a separate process too.
        """
        self._reap(block=False)
        if self._child is not None:
            return  # the previous compaction is still writing; try again at a later append
        assert self._fd is not None
        self._live = count
        if self.rotated.exists():
            # An earlier compaction did not finish: its records are in memory, so the snapshot covers
            # them; the live file keeps growing until then (replaying it on top stays correct).
            pass
        else:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self.path, self.rotated)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            os.write(self._fd, _HEADER)
            self._records = 0
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("dhcp: cannot fork to compact %s (%s); compacting in place", self.path, exc)
            _write_snapshot(self.snapshot, self.rotated, current())
            return
        if pid == 0:  # the child: write and leave, never return into the server's code
            code = 1
            try:
                _write_snapshot(self.snapshot, self.rotated, current())
                code = 0
            finally:
                os._exit(code)
        self._child = pid

    def compact_now(self, current: Callable[[], Iterator[Lease]], count: int) -> None:
        self._reap(block=True)
        self._compact(current, count)
        self._reap(block=True)

    def _reap(self, *, block: bool) -> None:
        if self._child is None:
            return
        try:
            pid, status = os.waitpid(self._child, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self._child = None
            return
        if pid == 0:
            return
        self._child = None
        if os.waitstatus_to_exitcode(status) != 0:
            log.warning("dhcp: compacting lease file %s failed; the journal is kept and replayed", self.path)

    def close(self) -> None:
        self._reap(block=True)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _write_snapshot(snapshot: Path, rotated: Path, leases: Iterator[Lease]) -> None:
    """Write all ``leases`` to ``snapshot`` atomically, then drop the rotated journal it supersedes."""
    tmp = snapshot.with_name(f".{snapshot.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(_HEADER)
            fh.writelines(_line(lease) for lease in leases)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, snapshot)
        dir_fd = os.open(snapshot.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename is durable before the journal it replaces goes
        finally:
            os.close(dir_fd)
        rotated.unlink(missing_ok=True)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _line(lease: Lease) -> bytes:
    hostname = "null" if lease.hostname is None else json.dumps(lease.hostname)
    client_id = "null" if lease.client_id is None else f'"{lease.client_id}"'
    free_since = "null" if lease.free_since is None else repr(lease.free_since)
    ip = inet_ntoa(lease.ip.packed)  # str(IPv4Address) formats in Python: 5x slower
    return (
        f'{{"ip": "{ip}", "mac": "{lease.mac}", "state": "{lease.state}", "expires_at": {lease.expires_at!r}, '
        f'"free_since": {free_since}, "hostname": {hostname}, "client_id": {client_id}}}\n'
    ).encode()


def _load_version_1(path: Path, data: bytes) -> Iterator[Lease]:
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != 1:
            raise ValueError("expected an object with version 1")
        records = raw["leases"]
        if not isinstance(records, list):
            raise ValueError("'leases' is not a list")
        leases = [_lease_from(record) for record in records]
    except (ValueError, KeyError, TypeError) as exc:
        raise LeaseFileError(f"corrupt lease file {path}: {exc}") from exc
    yield from leases


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _lease_from(record: Any) -> Lease:
    if not isinstance(record, dict):
        raise ValueError(f"lease record {record!r} is not an object")
    state = record["state"]
    if state not in _STATES or state == "offered":
        raise ValueError(f"unknown lease state {state!r}")
    free_since = record.get("free_since")
    for name, value in (("expires_at", record["expires_at"]), ("free_since", free_since)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{name} {value!r} is not a number")
    hostname, client_id = record.get("hostname"), record.get("client_id")
    for name, value in (("hostname", hostname), ("client_id", client_id)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} {value!r} is not a string")
    return Lease(
        mac=normalise_mac(str(record["mac"])),
        ip=IPv4Address(record["ip"]),
        expires_at=float(record["expires_at"]),
        state=state,
        hostname=hostname,
        client_id=client_id,
        free_since=None if free_since is None else float(free_since),
    )
