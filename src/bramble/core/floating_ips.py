"""Floating IPs: a public address taken from a network and mapped 1:1 to a VM's NIC on another network.

The address comes from the same IPAM as NICs (``NetworkService.allocate_address``: never twice, a fixed
address on request, quarantine after a delete). Attaching maps it on the node that runs the VM (DNAT of
the public address to the NIC's, SNAT of the NIC's own connections to the public address, the address as
a /32 on the public network's uplink): the row changes first, then that node swaps its whole set of
mappings; a node that refuses undoes the row. A deleted VM's floating IPs stay allocated, unattached,
as in Neutron. Every change is an event on ``fip/<address>``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid, NotFound
from bramble.core.gateway import NodeGateway
from bramble.core.networks import NetworkService
from bramble.core.operations import OperationHandle
from bramble.db.models import FloatingIpRow, IpReleaseRow, NetworkRow, NicRow, VmRow, utcnow
from bramble.network.driver import FloatingIp, bridge_name

log = logging.getLogger(__name__)

BUSY_STATES = ("creating", "deleting")


@dataclass(frozen=True)
class FloatingIpInfo:
    """A floating IP with what it is mapped to, for the API and the events."""

    id: str
    address: str
    network: str  # the network it was taken from (name)
    network_id: str
    vm: str | None = None  # while attached: the VM's name, NIC position and private address
    vm_id: str | None = None
    nic: int | None = None
    nic_id: str | None = None
    private_address: str | None = None
    node: str | None = None
    created_at: Any = None

    def summary(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "network": self.network,
            "vm": self.vm,
            "nic": self.nic,
            "private_address": self.private_address,
        }


def _target(address: str) -> str:
    return f"fip/{address}"


async def _infos(session: AsyncSession, *conditions: Any) -> list[FloatingIpInfo]:
    public = aliased(NetworkRow)
    stmt = (
        select(FloatingIpRow, public.name, NicRow, VmRow)
        .join(public, public.id == FloatingIpRow.network_id)
        .outerjoin(NicRow, NicRow.id == FloatingIpRow.nic_id)
        .outerjoin(VmRow, VmRow.id == NicRow.vm_id)
        .where(*conditions)
    )
    result = []
    for row, network, nic, vm in (await session.execute(stmt)).all():
        result.append(
            FloatingIpInfo(
                id=row.id,
                address=row.address,
                network=network,
                network_id=row.network_id,
                vm=vm.name if vm is not None else None,
                vm_id=vm.id if vm is not None else None,
                nic=nic.position if nic is not None else None,
                nic_id=nic.id if nic is not None else None,
                private_address=nic.address if nic is not None else None,
                node=vm.node if vm is not None else None,
                created_at=row.created_at,
            )
        )
    return sorted(result, key=lambda info: IPv4Address(info.address))


class FloatingIpService:
    def __init__(self, deps: CoreDeps, networks: NetworkService | None = None) -> None:
        self.deps = deps
        self.networks = networks or NetworkService(deps)

    # ------------------------------------------------------------------ reading
    async def list_all(self) -> list[FloatingIpInfo]:
        async with self.deps.db.read() as session:
            return await _infos(session)

    async def get(self, ref: str) -> FloatingIpInfo:
        """By address or id."""
        async with self.deps.db.read() as session:
            found = await _infos(session, or_(FloatingIpRow.id == ref, FloatingIpRow.address == ref))
        if not found:
            raise NotFound(f"floating IP {ref!r} not found")
        return found[0]

    async def by_nic(self, nic_ids: Sequence[str]) -> dict[str, str]:
        """NIC id -> its floating address, for ``vm show``."""
        if not nic_ids:
            return {}
        async with self.deps.db.read() as session:
            rows = (
                await session.execute(
                    select(FloatingIpRow.nic_id, FloatingIpRow.address).where(FloatingIpRow.nic_id.in_(list(nic_ids)))
                )
            ).all()
        return {nic_id: address for nic_id, address in rows if nic_id is not None}

    async def node_mappings(self, node: str) -> list[FloatingIp]:
        """Every floating IP attached to a NIC of a VM placed on ``node``: that node's whole NAT set."""
        public, private = aliased(NetworkRow), aliased(NetworkRow)
        async with self.deps.db.read() as session:
            rows = (
                await session.execute(
                    select(FloatingIpRow.address, NicRow.address, private.id, public.uplink)
                    .join(NicRow, NicRow.id == FloatingIpRow.nic_id)
                    .join(VmRow, VmRow.id == NicRow.vm_id)
                    .join(private, private.id == NicRow.network_id)
                    .join(public, public.id == FloatingIpRow.network_id)
                    .where(VmRow.node == node)
                )
            ).all()
        return sorted(
            (
                FloatingIp(
                    public_ip=IPv4Address(public_ip),
                    private_ip=IPv4Address(private_ip),
                    bridge=bridge_name(network_id),
                    uplink=uplink,
                )
                for public_ip, private_ip, network_id, uplink in rows
            ),
            key=lambda f: f.public_ip,
        )

    # ------------------------------------------------------------------ create / delete
    async def create(self, ctx: RequestContext, network_ref: str, address: str | None = None) -> FloatingIpInfo:
        """Take an address of ``network_ref`` (the next free one, or ``address``) for this project.

        IPAM decides and the row is inserted in one write transaction, before the operation, so the
        operation and its event are on ``fip/<address>``; a refusal (unknown network, an address outside
        the subnet, taken or quarantined, a full subnet) is a rejected event and leaves nothing.
        """
        rejected_target = _target(address) if address is not None else f"network/{network_ref}"
        async with self.deps.runner.validating(ctx, "fip.create", rejected_target):
            async with self.deps.db.read() as session:
                network = await find_by_ref(session, NetworkRow, network_ref, "network")
            try:
                async with self.deps.db.write() as session:
                    current = await session.get(NetworkRow, network.id)
                    if current is None:
                        raise Conflict(f"network {network.name!r} was deleted meanwhile")
                    chosen = await self.networks.allocate_address(session, current, address)
                    row = FloatingIpRow(
                        id=str(uuid.uuid4()), network_id=network.id, address=str(chosen), created_at=utcnow()
                    )
                    session.add(row)
            except IntegrityError:
                raise Conflict(f"network {network.name!r}: the address was taken meanwhile; try again") from None

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.undo.push("give the address back", lambda: self._remove_row(row.id))
            op.after = {"address": row.address, "network": network.name}
            return {"floating_ip_id": row.id, "address": row.address}

        await self.deps.runner.run(ctx, "fip.create", _target(row.address), work)
        return await self.get(row.id)

    async def _remove_row(self, fip_id: str) -> None:
        """Undo of a create that never reached anyone: no quarantine, as for a VM that never ran."""
        async with self.deps.db.write() as session:
            row = await session.get(FloatingIpRow, fip_id)
            if row is not None:
                await session.delete(row)

    async def delete(self, ctx: RequestContext, ref: str, *, detach: bool = False) -> None:
        """Give the address back (it enters quarantine). Refused while attached unless ``detach``."""
        async with self.deps.runner.validating(ctx, "fip.delete", _target(ref)):
            info = await self.get(ref)
            if info.vm is not None and not detach:
                raise Conflict(
                    f"floating IP {info.address} is attached to VM {info.vm!r}; detach it first"
                    " (or delete with --detach)"
                )

        async def work(op: OperationHandle) -> None:
            op.before = info.summary()
            current = await self.get(info.id)
            if current.vm_id is not None:
                async with self._vm_lock(current):
                    await self._unmap(op, current)
            async with self.deps.db.write() as session:
                row = await session.get(FloatingIpRow, info.id)
                if row is None:
                    return
                if row.nic_id is not None:
                    raise Conflict(f"floating IP {info.address} was attached meanwhile; detach it first")
                await session.merge(IpReleaseRow(network_id=row.network_id, address=row.address, freed_at=utcnow()))
                await session.delete(row)

        await self.deps.runner.run(ctx, "fip.delete", _target(info.address), work)

    # ------------------------------------------------------------------ attach / detach
    async def attach(self, ctx: RequestContext, ref: str, vm_ref: str, nic: int | None = None) -> FloatingIpInfo:
        """Map the floating IP to the VM's NIC ``nic`` (default: its first NIC on another network)."""
        async with self.deps.runner.validating(ctx, "fip.attach", _target(ref)):
            info = await self.get(ref)
            if info.vm is not None:
                raise Conflict(
                    f"floating IP {info.address} is already attached to VM {info.vm!r} (nic{info.nic}); detach it first"
                )
            async with self.deps.db.read() as session:
                vm = await find_by_ref(session, VmRow, vm_ref, "VM")
                target = await self._pick_nic(session, info, vm, nic)
                taken = await session.scalar(select(FloatingIpRow.address).where(FloatingIpRow.nic_id == target.id))
            if taken is not None:
                raise Conflict(f"nic{target.position} of VM {vm.name!r} already has floating IP {taken}")
            if vm.state in BUSY_STATES:
                raise Conflict(f"VM {vm.name!r} is {vm.state}; wait until that finishes")

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = info.summary()
            async with self.deps.runner.lock_for(f"vm/{vm.name}"):  # no VM delete in between
                async with self.deps.db.write() as session:
                    row = await session.get(FloatingIpRow, info.id)
                    live_nic = await session.get(NicRow, target.id)
                    if row is None:
                        raise NotFound(f"floating IP {info.address} was deleted meanwhile")
                    if row.nic_id is not None:
                        raise Conflict(f"floating IP {info.address} was attached meanwhile")
                    if live_nic is None:
                        raise Conflict(f"VM {vm.name!r} was deleted meanwhile")
                    row.nic_id = target.id
                    try:
                        await session.flush()
                    except IntegrityError:
                        raise Conflict(f"nic{target.position} of VM {vm.name!r} got a floating IP meanwhile") from None
                op.undo.push("unmap the floating IP", lambda: self._set_nic(info.id, None, vm.node))
                await self._refresh_node(vm.node, vm.name)
            done = await self.get(info.id)
            op.after = done.summary()
            return {"floating_ip_id": info.id, "vm_id": vm.id, "nic": target.position}

        await self.deps.runner.run(ctx, "fip.attach", _target(info.address), work)
        return await self.get(info.id)

    async def detach(self, ctx: RequestContext, ref: str) -> FloatingIpInfo:
        async with self.deps.runner.validating(ctx, "fip.detach", _target(ref)):
            info = await self.get(ref)
            if info.vm is None:
                raise Conflict(f"floating IP {info.address} is not attached")

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = info.summary()
            current = await self.get(info.id)
            if current.vm_id is not None:
                async with self._vm_lock(current):
                    await self._unmap(op, current)
            op.after = (await self.get(info.id)).summary()
            return {"floating_ip_id": info.id}

        await self.deps.runner.run(ctx, "fip.detach", _target(info.address), work)
        return await self.get(info.id)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    async def _pick_nic(session: AsyncSession, info: FloatingIpInfo, vm: VmRow, index: int | None) -> NicRow:
        nics = list(
            (await session.scalars(select(NicRow).where(NicRow.vm_id == vm.id).order_by(NicRow.position))).all()
        )
        if not nics:
            raise Invalid(f"VM {vm.name!r} has no NIC to map floating IP {info.address} to")
        if index is None:
            others = [n for n in nics if n.network_id != info.network_id]
            if not others:
                raise Invalid(
                    f"every NIC of VM {vm.name!r} is on network {info.network!r}, where {info.address} comes from"
                )
            return others[0]
        if not 0 <= index < len(nics):
            raise Invalid(f"VM {vm.name!r} has no nic{index} (it has nic0-nic{len(nics) - 1})")
        chosen = nics[index]
        if chosen.network_id == info.network_id:
            raise Invalid(
                f"nic{index} of VM {vm.name!r} is on network {info.network!r}, where {info.address} comes from;"
                " a floating IP maps to a NIC on another network"
            )
        return chosen

    async def _unmap(self, op: OperationHandle, info: FloatingIpInfo) -> None:
        """Detach in the database, then on the node; a node that refuses gets the mapping back."""
        assert info.nic_id is not None
        await self._set_nic(info.id, None)
        op.undo.push("map the floating IP again", lambda: self._set_nic(info.id, info.nic_id, info.node))
        await self._refresh_node(info.node, info.vm or "?")

    @asynccontextmanager
    async def _vm_lock(self, info: FloatingIpInfo) -> AsyncIterator[None]:
        if info.vm is None:
            yield
            return
        async with self.deps.runner.lock_for(f"vm/{info.vm}"):
            yield

    async def _set_nic(self, fip_id: str, nic_id: str | None, node: str | None = None) -> None:
        """Set the row's NIC; with ``node``, also make that node apply the result (an undo step)."""
        async with self.deps.db.write() as session:
            row = await session.get(FloatingIpRow, fip_id)
            if row is not None:
                row.nic_id = nic_id
        if node is not None:
            try:
                await self._refresh_node(node, "")
            except Exception:  # the node marked its mappings stale: its reconcile loop applies them
                log.exception("node %s could not re-apply its floating IPs", node)

    def _gateway(self, node: str | None, vm: str) -> NodeGateway:
        if node is None:
            raise Conflict(f"VM {vm!r} has no node")
        try:
            return self.deps.nodes.gateway(node)
        except LookupError:
            raise Conflict(f"node {node!r} of VM {vm!r} is not reachable") from None

    async def _refresh_node(self, node: str | None, vm: str) -> None:
        """The node that runs the VM swaps its whole set of floating IP mappings from the database."""
        await self._gateway(node, vm).refresh_floating_ips()
