"""Snapshots and flatten of a VM's root disk.

The disk is stored in the VM's pool under the VM's id, so these calls take the same
path as the volume code (the pool's driver in this process). Every change runs as an
operation on ``vm/NAME``: it holds the VM's lock (no start or stop in between) and
lands in the audit log. Where the driver cannot change a disk a VM has open (a local
qcow2 file, locked by QEMU), the VM must be stopped; RBD takes snapshots of a running
guest's disk, crash-consistent (as after a power cut: what the guest had not written
yet is not in it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid, NotFound
from bramble.core.operations import OperationHandle
from bramble.core.pools import pool_of
from bramble.core.volumes import check_snapshot_name, storage_step
from bramble.db.models import VmRow
from bramble.storage.driver import DiskSnapshot, StorageDriver

OPEN_STATES = ("running", "paused")  # QEMU has the disk open
BUSY_STATES = ("creating", "deleting")


async def vm_disk_store(deps: CoreDeps, vm: VmRow, action: str) -> StorageDriver:
    """The driver of the VM's disk, or a 409 saying why ``action`` cannot apply to it."""
    if vm.state in BUSY_STATES:
        raise Conflict(f"VM {vm.name!r} is {vm.state}; {action} when that finishes")
    if not vm.disk_path:
        raise Conflict(f"VM {vm.name!r} has no disk")
    if vm.cache == "on":
        raise Conflict(
            f"the disk of VM {vm.name!r} is an overlay on its node's cache tier: {action} of that overlay is "
            f"not supported; move it into Ceph first (`bramble vm cache drop {vm.name}`)"
        )
    return (await pool_of(deps, vm.pool))[1]


def refuse_open(vm: VmRow, store: StorageDriver, action: str, *, live_ok: bool = True) -> None:
    """A disk QEMU holds open changes only where the driver allows it (and ``live_ok``)."""
    if vm.state in OPEN_STATES and not (live_ok and store.changes_while_open):
        raise Conflict(f"VM {vm.name!r} is {vm.state}: stop the VM first to {action} its disk")


class VmDiskService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    async def _vm(self, ref: str) -> VmRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, VmRow, ref, "VM")

    async def _checked(self, vm_id: str, action: str, *, live_ok: bool = True) -> tuple[VmRow, StorageDriver]:
        """The VM read fresh (inside the operation, under its lock) and checked again."""
        vm = await self._vm(vm_id)
        store = await vm_disk_store(self.deps, vm, action)
        refuse_open(vm, store, action, live_ok=live_ok)
        return vm, store

    async def _names(self, vm: VmRow, store: StorageDriver) -> set[str]:
        return {s.name for s in await storage_step(store.snapshot_list(vm.id))}

    # ------------------------------------------------------------------ snapshots
    async def snapshots(self, ref: str) -> list[DiskSnapshot]:
        vm = await self._vm(ref)
        store = await vm_disk_store(self.deps, vm, "listing snapshots")
        result: list[DiskSnapshot] = await storage_step(store.snapshot_list(vm.id))
        return result

    async def snapshot_create(self, ctx: RequestContext, ref: str, snapshot: str) -> DiskSnapshot:
        async with self.deps.runner.validating(ctx, "vm.snapshot.create", f"vm/{ref}"):
            vm = await self._vm(ref)
            check_snapshot_name(snapshot)
            store = await vm_disk_store(self.deps, vm, "snapshot")
            refuse_open(vm, store, "snapshot")
            if snapshot in await self._names(vm, store):
                raise Conflict(f"VM {vm.name!r} already has a snapshot {snapshot!r}")
        made: list[DiskSnapshot] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            current, store = await self._checked(vm.id, "snapshot")
            made.append(await storage_step(store.snapshot_create(current.id, snapshot)))
            op.after = {"snapshot": snapshot, "vm_state": current.state}
            return {"vm_id": vm.id, "snapshot": snapshot}

        await self.deps.runner.run(ctx, "vm.snapshot.create", f"vm/{vm.name}", work)
        return made[0]

    async def _existing(self, vm: VmRow, store: StorageDriver, snapshot: str) -> None:
        if snapshot not in await self._names(vm, store):
            raise NotFound(f"VM {vm.name!r} has no snapshot {snapshot!r}")

    async def snapshot_rollback(self, ctx: RequestContext, ref: str, snapshot: str) -> None:
        """The disk back as it was at ``snapshot``; never under a running guest (it would see its disk change)."""
        async with self.deps.runner.validating(ctx, "vm.snapshot.rollback", f"vm/{ref}"):
            vm = await self._vm(ref)
            store = await vm_disk_store(self.deps, vm, "roll back")
            refuse_open(vm, store, "roll back", live_ok=False)
            await self._existing(vm, store, snapshot)

        async def work(op: OperationHandle) -> dict[str, Any]:
            current, store = await self._checked(vm.id, "roll back", live_ok=False)
            await storage_step(store.snapshot_rollback(current.id, snapshot))
            op.after = {"rolled_back_to": snapshot}
            return {"vm_id": vm.id, "snapshot": snapshot}

        await self.deps.runner.run(ctx, "vm.snapshot.rollback", f"vm/{vm.name}", work)

    async def snapshot_delete(self, ctx: RequestContext, ref: str, snapshot: str) -> None:
        async with self.deps.runner.validating(ctx, "vm.snapshot.delete", f"vm/{ref}"):
            vm = await self._vm(ref)
            store = await vm_disk_store(self.deps, vm, "delete a snapshot of")
            refuse_open(vm, store, "delete a snapshot of")
            await self._existing(vm, store, snapshot)

        async def work(op: OperationHandle) -> dict[str, Any]:
            current, store = await self._checked(vm.id, "delete a snapshot of")
            op.before = {"snapshot": snapshot}
            await storage_step(store.snapshot_delete(current.id, snapshot))
            return {"vm_id": vm.id, "snapshot": snapshot}

        await self.deps.runner.run(ctx, "vm.snapshot.delete", f"vm/{vm.name}", work)

    # ------------------------------------------------------------------ flatten
    async def flatten(self, ctx: RequestContext, ref: str) -> None:
        """The VM's disk gets its own copy of the data it shares with its image."""
        async with self.deps.runner.validating(ctx, "vm.flatten", f"vm/{ref}"):
            vm = await self._vm(ref)
            refuse_open(vm, await vm_disk_store(self.deps, vm, "flatten"), "flatten")

        async def work(op: OperationHandle) -> dict[str, Any]:
            current, store = await self._checked(vm.id, "flatten")
            await flatten_vm_disk(current, store)
            return {"vm_id": vm.id}

        await self.deps.runner.run(ctx, "vm.flatten", f"vm/{vm.name}", work)

    async def check_flattenable(self, image_id: str) -> list[VmRow]:
        """The VMs whose disks depend on an image, each checked (409 naming it) to be flattenable now."""
        async with self.deps.db.read() as session:
            vms = list((await session.scalars(select(VmRow).where(VmRow.image_id == image_id))).all())
        for vm in sorted(vms, key=lambda v: v.name):
            refuse_open(vm, await vm_disk_store(self.deps, vm, "flatten"), "flatten")
        return vms

    async def flatten_for_image(self, vms: list[VmRow]) -> None:
        """Flatten each VM's disk under its lock; the first failure names the disk and stops."""
        for vm in sorted(vms, key=lambda v: v.name):
            async with self.deps.runner.lock_for(f"vm/{vm.name}"):
                current, store = await self._checked(vm.id, "flatten")
                try:
                    await flatten_vm_disk(current, store)
                except (Invalid, Conflict) as exc:
                    raise type(exc)(f"flattening the disk of VM {vm.name!r} ({vm.disk_path}) failed: {exc}") from None


async def flatten_vm_disk(vm: VmRow, store: StorageDriver) -> None:
    """Flatten unless already flat (RBD refuses to flatten a disk that has no parent)."""
    parent = getattr(store, "disk_parent", None)
    if parent is not None and await storage_step(parent(vm.id)) is None:
        return
    await storage_step(store.flatten_disk(vm.id))
