"""DHCPv4 lease store for one subnet/range, persisted as JSON.

The store owns the allocation policy (reservation, then the client's previous address, then the lowest
free address whose quarantine has passed) so that the DHCP decision code never picks addresses itself.
Freed addresses are quarantined before another client gets them: a machine that was just shut down may
still be referenced by DNS, ARP caches or firewall rules, and handing its address to a stranger at once
is how traffic reaches the wrong host. Offers are short reservations so that two concurrent DISCOVERs
never get the same address. All times are float epoch seconds from the injectable ``clock``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["Lease", "LeaseFileError", "LeaseState", "LeaseStore", "Pool", "Reservation", "normalise_mac"]

log = logging.getLogger(__name__)

LeaseState = Literal["offered", "bound", "released", "expired", "declined"]
_STATES: tuple[str, ...] = get_args(LeaseState)
_ACTIVE = ("offered", "bound")
_FILE_VERSION = 1


class LeaseFileError(Exception):
    """The lease file cannot be read or written; the message names the path so operators can act."""


def normalise_mac(mac: str) -> str:
    """Lower-case colon form, so reservations typed as ``AA-BB-..`` match packets' ``aa:bb:..``."""
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

    def __post_init__(self) -> None:
        if (self.range_start is None) != (self.range_end is None):
            raise ValueError("a range needs both range_start and range_end")
        if self.range_start is not None and self.range_end is not None:
            if not self.range_start <= self.range_end:
                raise ValueError(f"empty range {self.range_start}..{self.range_end}")
            for addr in (self.range_start, self.range_end):
                if addr not in self.subnet:
                    raise ValueError(f"range address {addr} is outside {self.subnet}")
        object.__setattr__(self, "reservations", {normalise_mac(m): r for m, r in self.reservations.items()})
        seen: dict[IPv4Address, str] = {}
        for mac, res in self.reservations.items():
            if res.ip not in self.subnet or not self.usable(res.ip):
                raise ValueError(f"reservation {res.ip} for {mac} is not a usable address of {self.subnet}")
            if res.ip in seen:
                raise ValueError(f"{res.ip} is reserved for both {seen[res.ip]} and {mac}")
            seen[res.ip] = mac

    def usable(self, ip: IPv4Address) -> bool:
        """Never the network/broadcast address or an excluded one (e.g. our own)."""
        if ip in self.excluded or ip not in self.subnet:
            return False
        return self.subnet.prefixlen >= 31 or ip not in (self.subnet.network_address, self.subnet.broadcast_address)

    def in_range(self, ip: IPv4Address) -> bool:
        if self.range_start is None or self.range_end is None:
            return False
        return self.range_start <= ip <= self.range_end and self.usable(ip)

    def reserved_for(self, ip: IPv4Address) -> str | None:
        for mac, res in self.reservations.items():
            if res.ip == ip:
                return mac
        return None


class LeaseStore:
    """Leases of one pool, keyed by address, written atomically to ``path`` after every binding change.

    Offers are kept in memory only: they last seconds, and writing the file per DISCOVER would cap the
    server at a few hundred exchanges per second (the same reason dnsmasq slows down with its lease file).
    """

    def __init__(self, path: Path | None, pool: Pool, *, clock: Callable[[], float] = time.time) -> None:
        self.path, self.pool, self._clock = path, pool, clock
        self._by_ip: dict[IPv4Address, Lease] = {}
        if path is not None and path.exists():
            self._load(path)

    # -- queries -------------------------------------------------------------------------------

    def leases(self) -> Iterator[Lease]:
        return iter(sorted(self._by_ip.values(), key=lambda lease: lease.ip))

    def get(self, ip: IPv4Address) -> Lease | None:
        return self._by_ip.get(ip)

    def lease_of(self, mac: str, now: float | None = None) -> Lease | None:
        """The client's most recent lease record (any state), refreshed for expiry."""
        now = self._now(now)
        mac = normalise_mac(mac)
        best: Lease | None = None
        for lease in self._by_ip.values():
            if lease.mac == mac:
                self._expire(lease, now)
                if best is None or (lease.state in _ACTIVE, lease.expires_at) > (
                    best.state in _ACTIVE,
                    best.expires_at,
                ):
                    best = lease
        return best

    def available(self, mac: str, ip: IPv4Address, now: float | None = None) -> bool:
        """May ``ip`` be given to ``mac`` now? Pool membership, reservations, holders and quarantine."""
        now = self._now(now)
        mac = normalise_mac(mac)
        res = self.pool.reservations.get(mac)
        if res is not None and res.ip == ip:
            owner_ok = True
        else:
            owner = self.pool.reserved_for(ip)
            if owner is not None:
                return False  # reserved for another MAC
            if res is not None:
                return False  # a reserved client gets its reservation only
            owner_ok = self.pool.in_range(ip)
        if not owner_ok:
            return False
        lease = self._by_ip.get(ip)
        if lease is None:
            return True
        self._expire(lease, now)
        if lease.state == "declined":
            return lease.free_since is None or now >= lease.free_since + self.pool.decline_seconds
        if lease.mac == mac:
            return True
        if lease.active(now):
            return False
        return lease.free_since is None or now >= lease.free_since + self.pool.quarantine_seconds

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
        ip = self._choose(mac, requested, now)
        if ip is None:
            return None
        lease = self._by_ip.get(ip)
        if lease is not None and lease.mac == mac and lease.state == "bound" and lease.active(now):
            return lease  # already bound (e.g. a reboot that starts with DISCOVER): keep the binding
        free_since = lease.free_since if lease is not None and lease.mac == mac else None
        self._drop_other_offers(mac, ip)
        new = Lease(mac, ip, now + self.pool.offer_seconds, "offered", hostname, _hex(client_id), free_since)
        self._by_ip[ip] = new
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
        if not self.available(mac, ip, now):
            return None
        self._drop_other_offers(mac, ip)
        for other in self._by_ip.values():
            # One bound address per client: a client that moved releases its old one (with quarantine).
            if other.mac == mac and other.ip != ip and other.active(now):
                other.state, other.expires_at, other.free_since = "released", now, now
        lease = Lease(mac, ip, now + lease_seconds, "bound", hostname, _hex(client_id), None)
        self._by_ip[ip] = lease
        self._save()
        return lease

    def cancel_offer(self, mac: str, now: float | None = None) -> None:
        """The client chose another server (RFC 2131 3.1.4): our offer is free again at once."""
        now = self._now(now)
        self._drop_other_offers(normalise_mac(mac), None)

    def release(self, mac: str, ip: IPv4Address, now: float | None = None) -> bool:
        """Client RELEASE: only the holder can free an address; starts the quarantine."""
        return self._free(mac, ip, "released", now)

    def decline(self, mac: str, ip: IPv4Address, now: float | None = None) -> bool:
        """Client DECLINE: someone else answers ARP for ``ip``; hold it for ``decline_seconds``."""
        return self._free(mac, ip, "declined", now)

    def set_pool(self, pool: Pool, now: float | None = None) -> None:
        """Swap the pool (new reservations); leases on addresses now reserved for someone else end."""
        now = self._now(now)
        self.pool = pool
        changed = False
        for ip, lease in list(self._by_ip.items()):
            owner = pool.reserved_for(ip)
            if owner is not None and owner != lease.mac:
                del self._by_ip[ip]  # IPAM moved this address: its decision wins, no quarantine
                changed = True
        if changed:
            self._save()

    # -- internals -----------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _expire(self, lease: Lease, now: float) -> None:
        if lease.state in _ACTIVE and lease.expires_at <= now:
            if lease.state == "bound":
                lease.free_since = lease.expires_at
            lease.state = "expired"  # an unanswered offer keeps its free_since: nobody used it

    def _choose(self, mac: str, requested: IPv4Address | None, now: float) -> IPv4Address | None:
        res = self.pool.reservations.get(mac)
        if res is not None:
            return res.ip if self.available(mac, res.ip, now) else None
        previous = self.lease_of(mac, now)
        if previous is not None and self.available(mac, previous.ip, now):
            return previous.ip
        if requested is not None and self.available(mac, requested, now):
            return requested
        if self.pool.range_start is None or self.pool.range_end is None:
            return None
        start, end = int(self.pool.range_start), int(self.pool.range_end)
        for value in range(start, end + 1):
            ip = IPv4Address(value)
            if self.available(mac, ip, now):
                return ip
        return None

    def _drop_other_offers(self, mac: str, keep: IPv4Address | None) -> None:
        for ip, lease in list(self._by_ip.items()):
            if lease.mac == mac and lease.state == "offered" and ip != keep:
                if lease.free_since is None:
                    del self._by_ip[ip]
                else:  # back to the released record it replaced, quarantine intact
                    lease.state, lease.expires_at = "released", lease.free_since

    def _free(self, mac: str, ip: IPv4Address, state: LeaseState, now: float | None) -> bool:
        now = self._now(now)
        mac = normalise_mac(mac)
        lease = self._by_ip.get(ip)
        if state == "declined" and (lease is None or lease.mac != mac) and self.pool.in_range(ip):
            # A DECLINE for an address we did not record (e.g. after losing the file) still quarantines it.
            if lease is None or not lease.active(now):
                self._by_ip[ip] = Lease(mac, ip, now, "declined", free_since=now)
                self._save()
                return True
            return False
        if lease is None or lease.mac != mac:
            return False
        self._expire(lease, now)
        if lease.state == "declined":
            return False
        lease.state, lease.expires_at, lease.free_since = state, now, now
        self._save()
        return True

    def _save(self) -> None:
        if self.path is None:
            return
        records = []
        for lease in self.leases():
            if lease.state == "offered":
                continue
            record = asdict(lease)
            record["ip"] = str(lease.ip)
            records.append(record)
        data = json.dumps({"version": _FILE_VERSION, "leases": records}, indent=1).encode()
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise LeaseFileError(f"cannot write lease file {self.path}: {exc}") from exc

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_bytes())
            if not isinstance(raw, dict) or raw.get("version") != _FILE_VERSION:
                raise ValueError(f"expected an object with version {_FILE_VERSION}")
            records = raw["leases"]
            if not isinstance(records, list):
                raise ValueError("'leases' is not a list")
            for record in records:
                lease = _lease_from(record)
                self._by_ip[lease.ip] = lease
        except OSError as exc:
            raise LeaseFileError(f"cannot read lease file {path}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise LeaseFileError(f"corrupt lease file {path}: {exc}") from exc
        log.info("dhcp: loaded %d leases from %s", len(self._by_ip), path)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _lease_from(record: Any) -> Lease:
    if not isinstance(record, dict):
        raise ValueError(f"lease record {record!r} is not an object")
    state = record["state"]
    if state not in _STATES:
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
