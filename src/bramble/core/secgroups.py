"""Security groups: named allow-lists a NIC joins; its firewall is the union of its groups' rules.

A ``default`` group (id ``default``) is made by the migration: inbound only from its own members,
everything outbound, as in OpenStack. A NIC created without groups joins it (and a deleted
default group is made again then). Rule changes, and VMs joining or leaving (remote-group address sets), are
pushed to every node at once; the agent swaps its firewall in one transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid
from bramble.core.operations import OperationHandle
from bramble.db.models import (
    NicRow,
    NicSecurityGroupRow,
    NodeRow,
    SecurityGroupRow,
    SecurityGroupRuleRow,
    VmRow,
    utcnow,
)
from bramble.network.secgroups import DEFAULT_GROUP, GroupRule, SecurityGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleRequest:
    direction: str
    protocol: str = "any"
    port_min: int | None = None
    port_max: int | None = None
    cidr: str | None = None
    remote_group: str | None = None  # name or id


def rule_summary(rule: SecurityGroupRuleRow, remote_name: str | None) -> dict[str, Any]:
    return {
        "id": rule.id,
        "direction": rule.direction,
        "protocol": rule.protocol,
        "port_min": rule.port_min,
        "port_max": rule.port_max,
        "cidr": rule.cidr,
        "remote_group": remote_name,
    }


def group_rule(rule: SecurityGroupRuleRow) -> GroupRule:
    return GroupRule(
        direction=rule.direction,  # type: ignore[arg-type]
        protocol=rule.protocol,  # type: ignore[arg-type]
        port_min=rule.port_min,
        port_max=rule.port_max,
        cidr=IPv4Network(rule.cidr) if rule.cidr else None,
        remote_group=rule.remote_group_id,
    )


class SecurityGroupService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    # ------------------------------------------------------------------ reading
    async def list_all(self) -> list[SecurityGroupRow]:
        async with self.deps.db.read() as session:
            return list((await session.scalars(select(SecurityGroupRow).order_by(SecurityGroupRow.name))).all())

    async def get(self, ref: str) -> SecurityGroupRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, SecurityGroupRow, ref, "security group")

    async def details(self, group_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The group's rules (with remote group names) and the VMs whose NICs are in it."""
        async with self.deps.db.read() as session:
            names = dict((await session.execute(select(SecurityGroupRow.id, SecurityGroupRow.name))).all())
            rules = (
                await session.scalars(
                    select(SecurityGroupRuleRow)
                    .where(SecurityGroupRuleRow.group_id == group_id)
                    .order_by(SecurityGroupRuleRow.created_at, SecurityGroupRuleRow.id)
                )
            ).all()
            vms = await self._member_vms(session, group_id)
        return [rule_summary(r, names.get(r.remote_group_id) if r.remote_group_id else None) for r in rules], vms

    @staticmethod
    async def _member_vms(session: AsyncSession, group_id: str) -> list[str]:
        stmt = (
            select(VmRow.name)
            .join(NicRow, NicRow.vm_id == VmRow.id)
            .join(NicSecurityGroupRow, NicSecurityGroupRow.nic_id == NicRow.id)
            .where(NicSecurityGroupRow.group_id == group_id)
        )
        return sorted(set((await session.scalars(stmt)).all()))

    async def groups_of(self, nic_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """Per NIC id: its groups as (id, name), by name."""
        async with self.deps.db.read() as session:
            rows = (
                await session.execute(
                    select(NicSecurityGroupRow.nic_id, SecurityGroupRow.id, SecurityGroupRow.name)
                    .join(SecurityGroupRow, SecurityGroupRow.id == NicSecurityGroupRow.group_id)
                    .where(NicSecurityGroupRow.nic_id.in_(list(nic_ids)))
                )
            ).all()
        result: dict[str, list[tuple[str, str]]] = {}
        for nic_id, group_id, name in rows:
            result.setdefault(nic_id, []).append((group_id, name))
        return {k: sorted(v, key=lambda g: g[1]) for k, v in result.items()}

    async def state(self) -> tuple[dict[str, SecurityGroup], dict[str, set[IPv4Address]]]:
        """Every group with its rules and every group's member addresses, cloud-wide (for the agents)."""
        async with self.deps.db.read() as session:
            groups = (await session.scalars(select(SecurityGroupRow))).all()
            rules = (await session.scalars(select(SecurityGroupRuleRow))).all()
            members = (
                await session.execute(
                    select(NicSecurityGroupRow.group_id, NicRow.address).join(
                        NicRow, NicRow.id == NicSecurityGroupRow.nic_id
                    )
                )
            ).all()
        by_group: dict[str, list[GroupRule]] = {}
        for rule in rules:
            by_group.setdefault(rule.group_id, []).append(group_rule(rule))
        compiled = {
            g.id: SecurityGroup(id=g.id, name=g.name, project="default", rules=tuple(by_group.get(g.id, ())))
            for g in groups
        }
        addresses: dict[str, set[IPv4Address]] = {}
        for group_id, address in members:
            addresses.setdefault(group_id, set()).add(IPv4Address(address))
        return compiled, addresses

    # ------------------------------------------------------------------ groups
    async def create(self, ctx: RequestContext, name: str, description: str = "") -> SecurityGroupRow:
        created: list[SecurityGroupRow] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            async with self.deps.db.write() as session:
                if await session.scalar(select(SecurityGroupRow.id).where(SecurityGroupRow.name == name)):
                    raise Conflict(f"security group {name!r} already exists")
                if name == DEFAULT_GROUP:
                    row = await self.ensure_default(session)
                else:
                    row = SecurityGroupRow(
                        id=str(uuid.uuid4()), name=name, description=description, created_at=utcnow()
                    )
                    session.add(row)
            created.append(row)
            op.after = {"name": name, "description": description}
            return {"security_group_id": row.id}

        await self.deps.runner.run(ctx, "secgroup.create", f"secgroup/{name}", work)
        return created[0]

    async def ensure_default(self, session: AsyncSession) -> SecurityGroupRow:
        """The ``default`` group, made with its two rules the first time it is needed."""
        row = (await session.scalars(select(SecurityGroupRow).where(SecurityGroupRow.name == DEFAULT_GROUP))).first()
        if row is not None:
            return row
        row = SecurityGroupRow(
            id=DEFAULT_GROUP,
            name=DEFAULT_GROUP,
            description="inbound only from members of this group, all outbound",
            created_at=utcnow(),
        )
        session.add(row)
        await session.flush()
        now = utcnow()
        session.add_all(
            [
                SecurityGroupRuleRow(
                    id=str(uuid.uuid4()), group_id=row.id, direction="ingress", protocol="any",
                    remote_group_id=row.id, created_at=now,
                ),
                SecurityGroupRuleRow(
                    id=str(uuid.uuid4()), group_id=row.id, direction="egress", protocol="any",
                    cidr="0.0.0.0/0", created_at=now,
                ),
            ]
        )  # fmt: skip
        return row

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        async with self.deps.runner.validating(ctx, "secgroup.delete", f"secgroup/{ref}"):
            row = await self.get(ref)

        async def work(op: OperationHandle) -> None:
            async with self.deps.db.write() as session:
                vms = await self._member_vms(session, row.id)
                if vms:
                    raise Conflict(f"security group {row.name!r} is in use by VM(s) {', '.join(vms)}")
                referring = sorted(
                    set(
                        (
                            await session.scalars(
                                select(SecurityGroupRow.name)
                                .join(SecurityGroupRuleRow, SecurityGroupRuleRow.group_id == SecurityGroupRow.id)
                                .where(
                                    SecurityGroupRuleRow.remote_group_id == row.id,
                                    SecurityGroupRuleRow.group_id != row.id,
                                )
                            )
                        ).all()
                    )
                )
                if referring:
                    raise Conflict(
                        f"security group {row.name!r} is the remote group of rules in {', '.join(referring)}"
                    )
                current = await session.get(SecurityGroupRow, row.id)
                if current is not None:
                    # its own rules first: a self-referencing rule would block the group's delete
                    for rule in (
                        await session.scalars(
                            select(SecurityGroupRuleRow).where(SecurityGroupRuleRow.group_id == row.id)
                        )
                    ).all():
                        await session.delete(rule)
                    await session.flush()
                    await session.delete(current)
            op.before = {"name": row.name}

        await self.deps.runner.run(ctx, "secgroup.delete", f"secgroup/{row.name}", work)

    # ------------------------------------------------------------------ rules
    async def add_rule(self, ctx: RequestContext, ref: str, req: RuleRequest) -> SecurityGroupRuleRow:
        target = f"secgroup/{ref}"
        async with self.deps.runner.validating(ctx, "secgroup.rule_add", target):
            group = await self.get(ref)
            remote = await self.get(req.remote_group) if req.remote_group else None
            try:
                cidr = IPv4Network(req.cidr, strict=True) if req.cidr is not None else None
            except ValueError as exc:
                raise Invalid(f"cidr {req.cidr!r}: {exc}") from None
            try:
                GroupRule(
                    direction=req.direction,  # type: ignore[arg-type]
                    protocol=req.protocol,  # type: ignore[arg-type]
                    port_min=req.port_min,
                    port_max=req.port_max,
                    cidr=cidr,
                    remote_group=remote.id if remote else None,
                )
            except ValueError as exc:
                raise Invalid(str(exc)) from None
        row = SecurityGroupRuleRow(
            id=str(uuid.uuid4()),
            group_id=group.id,
            direction=req.direction,
            protocol=req.protocol,
            port_min=req.port_min,
            port_max=req.port_max,
            cidr=str(cidr) if cidr is not None else None,
            remote_group_id=remote.id if remote else None,
            created_at=utcnow(),
        )

        async def work(op: OperationHandle) -> dict[str, Any]:
            async with self.deps.db.write() as session:
                session.add(row)
            op.after = rule_summary(row, remote.name if remote else None)
            await self.refresh_nodes()
            return {"rule_id": row.id}

        await self.deps.runner.run(ctx, "secgroup.rule_add", f"secgroup/{group.name}", work)
        return row

    async def delete_rule(self, ctx: RequestContext, ref: str, rule_id: str) -> None:
        target = f"secgroup/{ref}"
        async with self.deps.runner.validating(ctx, "secgroup.rule_delete", target):
            group = await self.get(ref)
            async with self.deps.db.read() as session:
                rule = await session.get(SecurityGroupRuleRow, rule_id)
            if rule is None or rule.group_id != group.id:
                from bramble.core.errors import NotFound

                raise NotFound(f"rule {rule_id!r} not found in security group {group.name!r}")

        async def work(op: OperationHandle) -> None:
            async with self.deps.db.write() as session:
                current = await session.get(SecurityGroupRuleRow, rule_id)
                if current is not None:
                    await session.delete(current)
            op.before = rule_summary(rule, None)
            await self.refresh_nodes()

        await self.deps.runner.run(ctx, "secgroup.rule_delete", f"secgroup/{group.name}", work)

    # ------------------------------------------------------------------ pushing to nodes
    async def refresh_nodes(self) -> None:
        """Every reachable node re-applies its firewall from the current state (rules, members)."""
        async with self.deps.db.read() as session:
            nodes = list((await session.scalars(select(NodeRow.name))).all())
        for node in nodes:
            try:
                gateway = self.deps.nodes.gateway(node)
            except LookupError:
                continue
            try:
                await gateway.refresh_security()
            except Exception:  # one unreachable node must not fail the change; its reconcile catches up
                log.exception("node %s could not apply the security groups", node)
