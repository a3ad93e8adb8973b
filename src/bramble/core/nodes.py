"""Nodes and the control plane's side of the agent link.

The agent asks what should run (``desired_vms``) and reports what does
(``report_vm_state``); both go through here so every observed change becomes an event.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from ipaddress import IPv4Address

from sqlalchemy import func, select

from bramble.audit import store as audit
from bramble.compute.driver import DesiredVm, HostFacts, PowerState, VmRuntime
from bramble.core.deps import CoreDeps
from bramble.core.floating_ips import FloatingIpService
from bramble.core.networks import attachments_by_vm
from bramble.core.pools import pool_specs
from bramble.core.secgroups import SecurityGroupService
from bramble.core.vms import state_name, vm_spec
from bramble.core.volumes import volumes_by_vm
from bramble.db.models import ImageRow, NodeRow, VmRow, utcnow
from bramble.network.driver import FloatingIp
from bramble.network.secgroups import SecurityGroup

log = logging.getLogger(__name__)

TRANSITIONAL = ("creating", "deleting")


class NodeService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    async def list_all(self) -> list[tuple[NodeRow, int, bool]]:
        """Every node with its VM count and whether its heartbeat is fresh."""
        stale_after = timedelta(seconds=self.deps.settings.agent.heartbeat_seconds * 3)
        now = utcnow()
        async with self.deps.db.read() as session:
            counts = dict((await session.execute(select(VmRow.node, func.count()).group_by(VmRow.node))).all())
            nodes = list((await session.scalars(select(NodeRow).order_by(NodeRow.name))).all())
        return [(n, int(counts.get(n.name, 0)), _fresh(n.last_heartbeat, now, stale_after)) for n in nodes]

    # ---------------------------------------------------------------- agent link
    async def register_node(self, facts: HostFacts) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(NodeRow, facts.name)
            before = None
            if row is None:
                row = NodeRow(name=facts.name)
                session.add(row)
            else:
                before = {"accel": row.accel, "cpus": row.cpus, "memory_mib": row.memory_mib}
            row.arch, row.cpus, row.memory_mib = facts.arch, facts.cpus, facts.memory_mib
            row.accel, row.accel_reason = facts.accel, facts.accel_reason
            row.roles = ",".join(facts.roles)
            row.last_heartbeat = utcnow()
            audit.record(
                session,
                actor=f"agent:{facts.name}",
                action="node.register",
                target=f"node/{facts.name}",
                message=f"{facts.arch}, {facts.cpus} CPUs, {facts.memory_mib} MiB, {facts.accel}"
                f" ({facts.accel_reason})",
                before=before,
                after={"accel": facts.accel, "cpus": facts.cpus, "memory_mib": facts.memory_mib},
            )

    async def heartbeat(self, node: str) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(NodeRow, node)
            if row is not None:
                row.last_heartbeat = utcnow()

    async def desired_vms(self, node: str) -> list[DesiredVm]:
        """VMs the agent should converge: not mid-operation, not being created or deleted."""
        async with self.deps.db.read() as session:
            rows = (
                await session.execute(
                    select(VmRow, ImageRow)
                    .outerjoin(ImageRow, VmRow.image_id == ImageRow.id)
                    .where(VmRow.node == node, VmRow.state.not_in(TRANSITIONAL))
                )
            ).all()
            nics = await attachments_by_vm(session, [vm.id for vm, _ in rows])
            volumes = await volumes_by_vm(session, [vm.id for vm, _ in rows])
            pools = await pool_specs(session)
        return [
            DesiredVm(
                spec=vm_spec(vm, image, nics.get(vm.id, []), volumes.get(vm.id, [])),
                desired_state=vm.desired_state,
                disk_id=vm.id,
                disk_pool=pools.get(vm.pool),
            )
            for vm, image in rows
            if not self.deps.runner.is_busy(f"vm/{vm.name}")
        ]

    async def desired_vm(self, node: str, vm_id: str) -> DesiredVm | None:
        """Fresh desired state of one VM, or None when an operation owns it right now."""
        async with self.deps.db.read() as session:
            row = (
                await session.execute(
                    select(VmRow, ImageRow)
                    .outerjoin(ImageRow, VmRow.image_id == ImageRow.id)
                    .where(VmRow.id == vm_id, VmRow.node == node)
                )
            ).first()
            nics = await attachments_by_vm(session, [vm_id])
            volumes = await volumes_by_vm(session, [vm_id])
            pools = await pool_specs(session)
        if row is None:
            return None
        vm, image = row
        if vm.state in TRANSITIONAL or self.deps.runner.is_busy(f"vm/{vm.name}"):
            return None
        spec = vm_spec(vm, image, nics.get(vm.id, []), volumes.get(vm.id, []))
        return DesiredVm(spec=spec, desired_state=vm.desired_state, disk_id=vm.id, disk_pool=pools.get(vm.pool))

    async def known_vm_ids(self, node: str) -> set[str]:
        """Every VM the database places on ``node``, whatever its state."""
        async with self.deps.db.read() as session:
            return set((await session.scalars(select(VmRow.id).where(VmRow.node == node))).all())

    async def known_image_ids(self) -> set[str]:
        """Every image the database has, whatever its state (a node drops the caches of the others)."""
        async with self.deps.db.read() as session:
            return set((await session.scalars(select(ImageRow.id))).all())

    async def report_vm_state(self, node: str, runtime: VmRuntime, *, actor: str | None = None) -> None:
        """Record what the agent observed. A change of state becomes an event.

        A guest that powers itself off stays off (its desired state follows), as in
        Nova; a QEMU process that died without a guest shutdown is restarted by the
        reconcile loop, because the user still wants it running.
        """
        observed = state_name(runtime.state)
        pid = runtime.pid if observed in ("running", "paused") else None
        async with self.deps.db.read() as session:
            seen = (
                await session.execute(select(VmRow.name, VmRow.state, VmRow.pid).where(VmRow.id == runtime.vm_id))
            ).first()
        # Most reports repeat what is known (every reconcile pass sends one): no write then.
        # While an operation works on the VM, it records the change itself, once.
        if seen is None or seen.state in TRANSITIONAL or (seen.state == observed and seen.pid == pid):
            return
        if self.deps.runner.is_busy(f"vm/{seen.name}"):
            return
        async with self.deps.db.write() as session:
            vm = await session.get(VmRow, runtime.vm_id)
            if vm is None or vm.state in TRANSITIONAL:
                return
            before = {"state": vm.state, "desired_state": vm.desired_state, "pid": vm.pid}
            if (
                runtime.state is PowerState.STOPPED
                and vm.desired_state != "stopped"
                and not self.deps.runner.is_busy(f"vm/{vm.name}")
            ):
                vm.desired_state = "stopped"
            reason = runtime.reason or vm.state_reason
            if runtime.state is PowerState.CRASHED:
                vm.state_reason = reason or "QEMU exited unexpectedly"
            if observed == vm.state and pid == vm.pid and before["desired_state"] == vm.desired_state:
                return
            vm.state, vm.pid = observed, pid
            if runtime.reason:
                vm.state_reason = runtime.reason
            if "accel" in runtime.extra:
                vm.accel = runtime.extra["accel"]
            audit.record(
                session,
                actor=actor or f"agent:{node}",
                action="vm.state",
                target=f"vm/{vm.name}",
                message=runtime.reason or None,
                before=before,
                after={"state": vm.state, "desired_state": vm.desired_state, "pid": vm.pid},
            )

    async def security_state(self, node: str) -> tuple[dict[str, SecurityGroup], dict[str, set[IPv4Address]]]:
        """Every group's rules and members cloud-wide: remote groups count VMs on other nodes too."""
        return await SecurityGroupService(self.deps).state()

    async def floating_ips(self, node: str) -> list[FloatingIp]:
        """The node's floating IP mappings: the agent applies those of the NICs it has plugged."""
        return await FloatingIpService(self.deps).node_mappings(node)

    async def record_event(self, node: str, action: str, target: str, message: str, outcome: str = "ok") -> None:
        """Let the agent log what it did on its own (reaping an orphan, a failed restart)."""
        async with self.deps.db.write() as session:
            audit.record(session, actor=f"agent:{node}", action=action, target=target, message=message, outcome=outcome)


def _fresh(when: datetime | None, now: datetime, stale_after: timedelta) -> bool:
    return when is not None and now - when <= stale_after
