"""VM networks and the address/MAC allocation of their NICs.

A network is a row (subnet, gateway, DNS, NAT, uplink/VLAN); nodes build its bridge when a VM
on it starts there. IPAM (``bramble.ipam``) only decides: the decision and the NIC insert share
one write transaction, and the unique keys on (network, address) and MAC back it up, so
concurrent creates never share an address.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import AddressValueError, IPv4Address, IPv4Network
from typing import Any

from sqlalchemy import delete, func, literal, null, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bramble.audit import store as audit
from bramble.compute.driver import NicAttachment
from bramble.core.context import SYSTEM, RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid, NoCapacity
from bramble.core.operations import OperationHandle
from bramble.db.models import (
    FloatingIpRow,
    IpReleaseRow,
    NetworkRow,
    NicRow,
    NicSecurityGroupRow,
    VmRow,
    utcnow,
)
from bramble.ipam import (
    AddressError,
    AddressInQuarantine,
    AddressInUse,
    InvalidNetwork,
    NetworkExhausted,
    Subnet,
    check_requested,
    choose_address,
    new_mac,
    parse_network,
)
from bramble.network.driver import bridge_name, tap_name

IFNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class NetworkRequest:
    name: str
    cidr: str
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    nat: bool = False
    uplink: str | None = None
    vlan: int | None = None


@dataclass(frozen=True)
class NicRequest:
    """One ``--net NAME[:IP]``: a network by name or id, and optionally the address wanted."""

    network: str
    address: str | None = None


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> IPv4Address:
    """Parsed once: every allocation re-reads its network's addresses, and parsing dominated it."""
    return IPv4Address(text)


def network_summary(row: NetworkRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "cidr": row.cidr,
        "gateway": row.gateway,
        "dns": dns_list(row),
        "nat": row.nat,
        "uplink": row.uplink,
        "vlan": row.vlan,
    }


def dns_list(row: NetworkRow) -> list[str]:
    return [a for a in row.dns.split(",") if a]


def subnet_of(row: NetworkRow) -> Subnet:
    return Subnet(cidr=IPv4Network(row.cidr), gateway=IPv4Address(row.gateway))


def attachment(nic: NicRow, network: NetworkRow, groups: Sequence[str] = ()) -> NicAttachment:
    """What a node needs to plug one NIC: names derived from ids, never stored."""
    return NicAttachment(
        nic_id=nic.id,
        network_id=network.id,
        tap=tap_name(nic.id),
        bridge=bridge_name(network.id),
        mac=nic.mac,
        address=nic.address,
        cidr=network.cidr,
        gateway=network.gateway,
        dns=tuple(dns_list(network)),
        nat=network.nat,
        uplink=network.uplink,
        vlan=network.vlan,
        security_groups=tuple(sorted(groups)),
    )


async def attachments_by_vm(session: AsyncSession, vm_ids: Sequence[str]) -> dict[str, list[NicAttachment]]:
    """What nodes need of each VM's NICs, security group ids included, in guest order."""
    pairs = await nics_by_vm(session, vm_ids)
    nic_ids = [nic.id for items in pairs.values() for nic, _ in items]
    groups: dict[str, list[str]] = {}
    if nic_ids:
        rows = (
            await session.execute(
                select(NicSecurityGroupRow.nic_id, NicSecurityGroupRow.group_id).where(
                    NicSecurityGroupRow.nic_id.in_(nic_ids)
                )
            )
        ).all()
        for nic_id, group_id in rows:
            groups.setdefault(nic_id, []).append(group_id)
    return {
        vm_id: [attachment(nic, network, groups.get(nic.id, ())) for nic, network in items]
        for vm_id, items in pairs.items()
    }


async def nics_by_vm(
    session: AsyncSession, vm_ids: Sequence[str] | None = None
) -> dict[str, list[tuple[NicRow, NetworkRow]]]:
    """NICs with their networks, per VM, in guest order (all VMs when ``vm_ids`` is None)."""
    stmt = select(NicRow, NetworkRow).join(NetworkRow, NicRow.network_id == NetworkRow.id)
    if vm_ids is not None:
        stmt = stmt.where(NicRow.vm_id.in_(list(vm_ids)))
    result: dict[str, list[tuple[NicRow, NetworkRow]]] = {}
    for nic, network in (await session.execute(stmt.order_by(NicRow.vm_id, NicRow.position))).all():
        result.setdefault(nic.vm_id, []).append((nic, network))
    return result


def _check_definition(req: NetworkRequest) -> None:
    """What parse_network does not cover: DNS addresses, the uplink name, the VLAN id."""
    for address in req.dns:
        try:
            IPv4Address(address)
        except AddressValueError:
            raise Invalid(f"DNS server {address!r} is not an IPv4 address") from None
    if req.uplink is not None and (not 1 <= len(req.uplink) <= 15 or not set(req.uplink) <= IFNAME_CHARS):
        raise Invalid(f"uplink {req.uplink!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    if req.vlan is not None:
        if req.uplink is None:
            raise Invalid("a VLAN needs --uplink, the interface that carries it")
        if not 1 <= req.vlan <= 4094:
            raise Invalid(f"VLAN id {req.vlan} is outside 1-4094")


class NetworkService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    @property
    def quarantine(self) -> timedelta:
        return timedelta(seconds=self.deps.settings.network.quarantine_seconds)

    # ------------------------------------------------------------------ reading
    async def list_all(self) -> list[tuple[NetworkRow, int]]:
        """Every network with the number of NICs on it."""
        async with self.deps.db.read() as session:
            counts = dict(
                (await session.execute(select(NicRow.network_id, func.count()).group_by(NicRow.network_id))).all()
            )
            rows = list((await session.scalars(select(NetworkRow).order_by(NetworkRow.name))).all())
        return [(row, int(counts.get(row.id, 0))) for row in rows]

    async def get(self, ref: str) -> NetworkRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, NetworkRow, ref, "network")

    async def ports(self, network_id: str) -> list[tuple[NicRow, str]]:
        """The NICs on a network with their VM's name, by address."""
        async with self.deps.db.read() as session:
            rows = (
                await session.execute(
                    select(NicRow, VmRow.name)
                    .join(VmRow, NicRow.vm_id == VmRow.id)
                    .where(NicRow.network_id == network_id)
                )
            ).all()
        return sorted(((nic, name) for nic, name in rows), key=lambda item: IPv4Address(item[0].address))

    # ------------------------------------------------------------------ create / delete
    async def create(self, ctx: RequestContext, req: NetworkRequest) -> NetworkRow:
        target = f"network/{req.name}"
        async with self.deps.runner.validating(ctx, "network.create", target):
            _check_definition(req)
            try:
                parse_network(req.cidr, req.gateway)
            except InvalidNetwork as exc:
                raise Invalid(str(exc)) from None

        async def work(op: OperationHandle) -> dict[str, Any]:
            try:
                async with self.deps.db.write() as session:
                    # Overlap is decided where the row is written: two creates cannot both pass.
                    await self.deps.db.serialize(session, "networks")
                    if await session.scalar(select(NetworkRow.id).where(NetworkRow.name == req.name)):
                        raise Conflict(f"network {req.name!r} already exists")
                    existing = {
                        IPv4Network(cidr): name
                        for cidr, name in (await session.execute(select(NetworkRow.cidr, NetworkRow.name))).all()
                    }
                    try:
                        subnet = parse_network(req.cidr, req.gateway, existing)
                    except InvalidNetwork as exc:
                        message = str(exc)
                        for cidr, name in existing.items():
                            if message.endswith(str(cidr)):
                                raise Conflict(f"{message} (network {name!r})") from None
                        raise Invalid(message) from None
                    row = NetworkRow(
                        id=str(uuid.uuid4()),
                        name=req.name,
                        cidr=str(subnet.cidr),
                        gateway=str(subnet.gateway),
                        dns=",".join(req.dns),
                        nat=req.nat,
                        uplink=req.uplink,
                        vlan=req.vlan,
                        created_at=utcnow(),
                    )
                    session.add(row)
            except IntegrityError:
                raise Conflict(f"network {req.name!r} already exists") from None
            op.after = network_summary(row)
            created.append(row)
            return {"network_id": row.id}

        created: list[NetworkRow] = []
        await self.deps.runner.run(ctx, "network.create", target, work)
        return created[0]

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        async with self.deps.runner.validating(ctx, "network.delete", f"network/{ref}"):
            row = await self.get(ref)

        async def work(op: OperationHandle) -> None:
            async with self.deps.db.write() as session:
                users = sorted(
                    set(
                        (
                            await session.scalars(
                                select(VmRow.name)
                                .join(NicRow, NicRow.vm_id == VmRow.id)
                                .where(NicRow.network_id == row.id)
                            )
                        ).all()
                    )
                )
                if users:
                    shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                    raise Conflict(f"network {row.name!r} is in use by VM(s) {shown}; delete them first")
                floating = sorted(
                    (
                        await session.scalars(select(FloatingIpRow.address).where(FloatingIpRow.network_id == row.id))
                    ).all(),
                    key=IPv4Address,
                )
                if floating:
                    shown = ", ".join(floating[:10]) + (f" and {len(floating) - 10} more" if len(floating) > 10 else "")
                    raise Conflict(f"network {row.name!r} holds floating IP(s) {shown}; delete them first")
                await session.execute(delete(IpReleaseRow).where(IpReleaseRow.network_id == row.id))
                current = await session.get(NetworkRow, row.id)
                if current is not None:
                    await session.delete(current)
            op.before = network_summary(row)

        # Bridges go away on each node with their last tap (the agent's job), so this is rows only.
        await self.deps.runner.run(ctx, "network.delete", f"network/{row.name}", work)

    # ------------------------------------------------------------------ allocation (inside the VM insert)
    async def resolve(self, session: AsyncSession, requests: Sequence[NicRequest]) -> list[NetworkRow]:
        """The networks asked for, or NotFound naming the first unknown one (each looked up once)."""
        found: dict[str, NetworkRow] = {}
        for req in requests:
            if req.network not in found:
                found[req.network] = await find_by_ref(session, NetworkRow, req.network, "network")
        return [found[req.network] for req in requests]

    async def allocate(
        self,
        session: AsyncSession,
        vm_id: str,
        requests: Sequence[NicRequest],
        networks: Sequence[NetworkRow] | None = None,
        now: datetime | None = None,
    ) -> list[NicRow]:
        """Give each requested NIC an address and a MAC, in the caller's write transaction.

        Bad or taken addresses raise (409 for taken or quarantined, 422 for the rest); the
        caller's transaction then rolls back, so nothing of the VM is left. ``networks`` may be
        the rows ``resolve`` found before the transaction (a network deleted since then fails the
        foreign key at the flush here, reported as such).
        """
        now = now or utcnow()
        if networks is None:
            networks = await self.resolve(session, requests)
        nics: list[NicRow] = []
        taken_macs: set[str] = set()
        for position, (req, network) in enumerate(zip(requests, networks, strict=True)):
            mac = new_mac(taken_macs)
            in_use, freed, mac_taken = await self._ipam_state(session, network.id, mac)
            in_use |= {_address(n.address) for n in nics if n.network_id == network.id}
            if mac_taken:  # one in 2^32 per NIC: draw again until the index has none
                mac = await self._unused_mac(session, taken_macs | {mac})
            taken_macs.add(mac)
            address = await self._take(session, network, req.address, in_use, freed, now)
            nics.append(
                NicRow(
                    id=str(uuid.uuid4()),
                    vm_id=vm_id,
                    network_id=network.id,
                    position=position,
                    address=str(address),
                    mac=mac,
                    created_at=now,
                )
            )
        session.add_all(nics)
        try:
            await session.flush()
        except IntegrityError:
            names = ", ".join(sorted({n.name for n in networks}))
            raise Conflict(f"network {names} changed while the VM was being created; try again") from None
        return nics

    async def allocate_address(
        self, session: AsyncSession, network: NetworkRow, requested: str | None = None, now: datetime | None = None
    ) -> IPv4Address:
        """One address of ``network`` for something other than a NIC (a floating IP), in the caller's
        write transaction: the same decision, quarantine and errors as a NIC's address.

        Takes the lock NIC allocation holds (``vm-placement``), so on PostgreSQL a NIC and a floating IP
        cannot pick the same address at once (the two tables have no common unique index).
        """
        await self.deps.db.serialize(session, "vm-placement")
        now = now or utcnow()
        in_use, freed, _ = await self._ipam_state(session, network.id, "")
        return await self._take(session, network, requested, in_use, freed, now)

    async def _take(
        self,
        session: AsyncSession,
        network: NetworkRow,
        requested: str | None,
        in_use: set[IPv4Address],
        freed: dict[IPv4Address, datetime],
        now: datetime,
    ) -> IPv4Address:
        """IPAM's decision as an API error (409 taken or quarantined, 422 not assignable, 409 full);
        a recycled address's release row goes."""
        subnet = subnet_of(network)
        try:
            if requested is not None:
                address = check_requested(subnet, requested, in_use, freed, now, self.quarantine)
            else:
                address = choose_address(subnet, in_use, freed, now, self.quarantine)
        except (AddressInUse, AddressInQuarantine) as exc:
            raise Conflict(f"network {network.name!r}: {exc}") from None
        except AddressError as exc:
            raise Invalid(f"network {network.name!r}: {exc}") from None
        except NetworkExhausted as exc:
            raise NoCapacity(f"network {network.name!r}: {exc}") from None
        if address in freed:
            await session.execute(
                delete(IpReleaseRow).where(IpReleaseRow.network_id == network.id, IpReleaseRow.address == str(address))
            )
        return address

    @staticmethod
    async def _ipam_state(
        session: AsyncSession, network_id: str, mac: str
    ) -> tuple[set[IPv4Address], dict[IPv4Address, datetime], bool]:
        """Addresses in use, recent releases and whether ``mac`` is taken, in one round trip.

        Every create pays this inside the serialised write transaction, so one query instead of
        three is most of the allocation's cost (see bench/ipam_alloc.py).
        """
        releases = select(literal("f"), IpReleaseRow.address, IpReleaseRow.freed_at).where(
            IpReleaseRow.network_id == network_id
        )
        used = select(literal("u"), NicRow.address, null()).where(NicRow.network_id == network_id)
        floating = select(literal("u"), FloatingIpRow.address, null()).where(FloatingIpRow.network_id == network_id)
        mac_rows = select(literal("m"), NicRow.mac, null()).where(NicRow.mac == mac)
        in_use: set[IPv4Address] = set()
        freed: dict[IPv4Address, datetime] = {}
        mac_taken = False
        # The releases come first: a UNION takes its column types from its first SELECT, so
        # freed_at goes through UtcDateTime and comes back timezone-aware.
        rows: Sequence[Any] = (await session.execute(union_all(releases, used, floating, mac_rows))).all()
        for row in rows:
            kind: str = row[0]
            value: str = row[1]
            freed_at: datetime | None = row[2]
            if kind == "u":
                in_use.add(_address(value))
            elif kind == "f" and freed_at is not None:
                freed[_address(value)] = freed_at
            elif kind == "m":
                mac_taken = True
        return in_use, freed, mac_taken

    @staticmethod
    async def _unused_mac(session: AsyncSession, taken: set[str]) -> str:
        """A random Bramble MAC the table does not hold (checked by the unique index, not a full read)."""
        while True:
            mac = new_mac(taken)
            if await session.scalar(select(NicRow.id).where(NicRow.mac == mac)) is None:
                return mac
            taken.add(mac)

    @staticmethod
    async def release(
        session: AsyncSession, vm_id: str, now: datetime | None = None, *, quarantine: bool = True
    ) -> list[NicRow]:
        """Free a VM's addresses (in the transaction that deletes it): each starts its quarantine now.

        ``quarantine=False`` for a create undone before its guest ran: nobody can hold a lease or
        an ARP entry for the address, and the user's retry with the same fixed address must work.
        """
        now = now or utcnow()
        nics = list((await session.scalars(select(NicRow).where(NicRow.vm_id == vm_id))).all())
        await detach_floating(session, [nic.id for nic in nics], "its VM was deleted")
        for nic in nics:
            if quarantine:
                await session.merge(IpReleaseRow(network_id=nic.network_id, address=nic.address, freed_at=now))
            await session.delete(nic)
        return nics


async def detach_floating(session: AsyncSession, nic_ids: Sequence[str], reason: str) -> list[FloatingIpRow]:
    """Unmap the floating IPs of these NICs (they stay allocated, as in Neutron): one event each."""
    if not nic_ids:
        return []
    rows = list((await session.scalars(select(FloatingIpRow).where(FloatingIpRow.nic_id.in_(list(nic_ids))))).all())
    for row in rows:
        row.nic_id = None
        audit.record(session, actor=SYSTEM.actor, action="fip.detach", target=f"fip/{row.address}", message=reason)
    await session.flush()  # before the NICs' delete, whatever order the unit of work picks
    return rows
