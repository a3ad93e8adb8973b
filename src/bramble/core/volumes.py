"""Volumes: disks that outlive VMs, moved from one VM to another, snapshotted, exported.

Every change goes through the operation runner on target ``volume/NAME``, so a failed
step is undone and the outcome is in the audit log. A volume is attached to at most one
VM; while attached its data may change under us, so delete and rollback are refused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bramble.compute.driver import DiskAttachment
from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid, NotFound
from bramble.core.gateway import NodeGateway
from bramble.core.operations import OperationHandle
from bramble.core.pools import pool_of, resolve_pool, storage_failure
from bramble.db.models import VmRow, VolumeRow, utcnow
from bramble.storage.driver import DiskSnapshot, StorageDriver, StorageError, StoredDisk

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MIB = 1024 * 1024
MAX_VOLUME_BYTES = 64 * 1024**4  # 64 TiB: a typo guard, not a quota
ATTACHABLE_STATES = ("running", "stopped")


def volume_state(row: VolumeRow) -> str:
    """Deleting a VM nulls ``vm_id`` in the database (ON DELETE SET NULL): that frees the volume."""
    if row.state == "attached" and row.vm_id is None:
        return "available"
    return row.state


def volume_summary(row: VolumeRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "size_bytes": row.size_bytes,
        "state": volume_state(row),
        "vm_id": row.vm_id,
        "pool": row.pool,
    }


def disk_id_of(row: VolumeRow) -> str:
    """Volume disks live beside VM disks; the prefix keeps the two id spaces apart."""
    return f"vol-{row.id}"


def volume_disk(row: VolumeRow, device: str | None = None) -> DiskAttachment:
    """The disk as QEMU opens it, named by the volume's device so a live detach finds it."""
    assert row.path is not None
    return DiskAttachment(path=row.path, format=row.format, node_name=device or row.device)


async def volumes_by_vm(session: AsyncSession, vm_ids: list[str]) -> dict[str, list[DiskAttachment]]:
    """The volumes each VM has attached, oldest attachment first (stable guest order)."""
    result: dict[str, list[DiskAttachment]] = {}
    if not vm_ids:
        return result
    rows = await session.scalars(
        select(VolumeRow)
        .where(VolumeRow.vm_id.in_(vm_ids), VolumeRow.path.is_not(None))
        .order_by(VolumeRow.updated_at, VolumeRow.id)
    )
    for row in rows:
        assert row.vm_id is not None
        result.setdefault(row.vm_id, []).append(volume_disk(row))
    return result


async def attached_volumes(session: AsyncSession, vm_id: str) -> list[DiskAttachment]:
    return (await volumes_by_vm(session, [vm_id])).get(vm_id, [])


def check_snapshot_name(name: str) -> None:
    if not SNAPSHOT_RE.match(name):
        raise Invalid(f"bad snapshot name {name!r}: letters, digits, '.', '_', '-' (up to 63)")


async def storage_step(step: Any) -> Any:
    """Storage refusals are the user's to fix (422), a backend without the feature too."""
    try:
        return await step
    except StorageError as exc:
        raise storage_failure(exc) from None
    except NotImplementedError as exc:
        raise Invalid(str(exc)) from None


class VolumeService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps
        self.store = deps.image_store

    # ------------------------------------------------------------------ reads
    async def list_all(self) -> list[tuple[VolumeRow, str | None]]:
        """Volumes with the name of the VM each is attached to."""
        async with self.deps.db.read() as session:
            rows = (
                await session.execute(
                    select(VolumeRow, VmRow.name).outerjoin(VmRow, VmRow.id == VolumeRow.vm_id).order_by(VolumeRow.name)
                )
            ).all()
        return [(row, vm) for row, vm in rows]

    async def get(self, ref: str) -> VolumeRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, VolumeRow, ref, "volume")

    async def vm_name(self, row: VolumeRow) -> str | None:
        if row.vm_id is None:
            return None
        async with self.deps.db.read() as session:
            vm = await session.get(VmRow, row.vm_id)
        return vm.name if vm is not None else None

    # ------------------------------------------------------------------ create / delete / resize
    @staticmethod
    def _check_name(name: str) -> None:
        if not NAME_RE.match(name):
            raise Invalid(f"bad volume name {name!r}: lower-case letters, digits and '-', up to 63")

    @staticmethod
    def _check_size(size_bytes: int) -> None:
        if size_bytes < MIB or size_bytes % MIB:
            raise Invalid(f"volume size must be a whole number of MiB, at least 1 MiB; got {size_bytes} bytes")
        if size_bytes > MAX_VOLUME_BYTES:
            raise Invalid(f"volume size {size_bytes} bytes is over the limit of {MAX_VOLUME_BYTES}")

    async def _insert(self, name: str, size_bytes: int, pool: str | None) -> VolumeRow:
        row = VolumeRow(
            id=str(uuid.uuid4()),
            name=name,
            size_bytes=size_bytes,
            state="creating",
            format="qcow2",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        try:
            async with self.deps.db.write() as session:
                if await session.scalar(select(VolumeRow.id).where(VolumeRow.name == name)):
                    raise Conflict(f"volume {name!r} already exists")
                # in the inserting transaction: a pool being deleted cannot miss the new volume
                pool_row = await resolve_pool(session, pool)
                row.driver, row.pool = pool_row.driver, pool_row.name
                session.add(row)
        except IntegrityError:
            raise Conflict(f"volume {name!r} already exists") from None
        return row

    async def _store(self, row: VolumeRow) -> StorageDriver:
        """The driver of the volume's pool."""
        return (await pool_of(self.deps, row.pool))[1]

    async def create(self, ctx: RequestContext, name: str, size_bytes: int, pool: str | None = None) -> VolumeRow:
        target = f"volume/{name}"
        async with self.deps.runner.validating(ctx, "volume.create", target):
            self._check_name(name)
            self._check_size(size_bytes)
            row = await self._insert(name, size_bytes, pool)

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.undo.push("remove the volume row", lambda: self._remove_row(row.id))
            store = await self._store(row)
            disk = await self._storage(store.create_volume(disk_id_of(row), size_bytes))
            op.undo.push("delete the volume's disk", lambda: store.delete_disk(disk_id_of(row)))
            await self._set_disk(row.id, disk)
            current = await self.get(row.id)
            op.after = volume_summary(current)
            return {"volume_id": row.id}

        await self.deps.runner.run(ctx, "volume.create", target, work)
        return await self.get(row.id)

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        async with self.deps.runner.validating(ctx, "volume.delete", f"volume/{ref}"):
            row = await self.get(ref)
            await self._refuse_attached(row, "delete")

        async def work(op: OperationHandle) -> None:
            current = await self.get(row.id)
            await self._refuse_attached(current, "delete")
            op.before = volume_summary(current)
            # The disk goes first: a failure leaves the row (retry works), never a row without data.
            await self._storage((await self._store(current)).delete_disk(disk_id_of(current)))
            await self._remove_row(row.id)

        await self.deps.runner.run(ctx, "volume.delete", f"volume/{row.name}", work)

    async def resize(self, ctx: RequestContext, ref: str, size_bytes: int) -> VolumeRow:
        """Grow a volume; attached to a running VM, QEMU grows it and the guest sees the new size."""
        async with self.deps.runner.validating(ctx, "volume.resize", f"volume/{ref}"):
            row = await self.get(ref)
            self._check_size(size_bytes)
            if size_bytes < row.size_bytes:
                raise Invalid(f"volume {row.name!r} is {row.size_bytes} bytes; shrinking to {size_bytes} is refused")

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = volume_summary(row)
            async with self._vm_lock(row.vm_id):
                live = await self._vm(row.vm_id) if row.vm_id else None
                if live is not None and live.state == "running" and row.device:
                    # QEMU holds the image open: it grows it itself and tells the guest (block_resize).
                    await self._gateway(live).grow_volume(live.id, row.device, size_bytes)
                    disk = StoredDisk(disk_id_of(row), row.path or "", row.format, size_bytes)
                elif live is not None and live.state not in ("stopped", "error"):
                    raise Conflict(f"VM {live.name!r} is {live.state}; resize while it runs or is stopped")
                else:
                    disk = await self._storage((await self._store(row)).resize_disk(disk_id_of(row), size_bytes))
            await self._set_disk(row.id, disk)
            op.after = volume_summary(await self.get(row.id))
            return {"volume_id": row.id}

        await self.deps.runner.run(ctx, "volume.resize", f"volume/{row.name}", work)
        return await self.get(row.id)

    # ------------------------------------------------------------------ attach / detach
    async def attach(self, ctx: RequestContext, ref: str, vm_ref: str) -> VolumeRow:
        """Attach to a running VM (hot-plug) or a stopped one (it gets the disk at its next start)."""
        async with self.deps.runner.validating(ctx, "volume.attach", f"volume/{ref}"):
            row = await self.get(ref)
            async with self.deps.db.read() as session:
                vm = await find_by_ref(session, VmRow, vm_ref, "VM")
            if row.vm_id == vm.id:
                raise Conflict(f"volume {row.name!r} is already attached to VM {vm.name!r}")
            await self._refuse_attached(row, "attach it elsewhere")
            if volume_state(row) != "available":
                raise Conflict(f"volume {row.name!r} is {volume_state(row)}")
            if vm.state not in ATTACHABLE_STATES:
                raise Conflict(f"VM {vm.name!r} is {vm.state}; volumes attach to running or stopped VMs")

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = volume_summary(row)
            device = f"vol-{row.id[:8]}"
            async with self._vm_lock(vm.id):  # no VM start or stop in between
                async with self.deps.db.write() as session:
                    current = await session.get(VolumeRow, row.id)
                    assert current is not None
                    if current.vm_id is not None:
                        raise Conflict(f"volume {row.name!r} was attached meanwhile")
                    current.vm_id, current.device, current.state = vm.id, device, "attached"
                op.undo.push("mark the volume detached", lambda: self._mark_detached(row.id))
                live = await self._vm(vm.id)
                if live.state == "running":
                    # Hot-plug; a VM that is stopped picks the disk up from its spec at the next start.
                    await self._gateway(live).attach_volume(live.id, volume_disk(row, device))
                elif live.state not in ATTACHABLE_STATES:
                    raise Conflict(f"VM {live.name!r} is {live.state}; volumes attach to running or stopped VMs")
            op.after = volume_summary(await self.get(row.id))
            return {"volume_id": row.id, "vm_id": vm.id, "device": device}

        await self.deps.runner.run(ctx, "volume.attach", f"volume/{row.name}", work)
        return await self.get(row.id)

    async def detach(self, ctx: RequestContext, ref: str) -> VolumeRow:
        async with self.deps.runner.validating(ctx, "volume.detach", f"volume/{ref}"):
            row = await self.get(ref)
            if row.vm_id is None:
                raise Conflict(f"volume {row.name!r} is not attached")
            async with self.deps.db.read() as session:
                vm = await session.get(VmRow, row.vm_id)
            if vm is not None and vm.state not in ("running", "stopped", "error"):
                raise Conflict(f"VM {vm.name!r} is {vm.state}; volumes detach from running or stopped VMs")

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = volume_summary(row)
            async with self._vm_lock(row.vm_id):
                live = await self._vm(row.vm_id) if row.vm_id else None
                if live is not None and live.state == "running" and row.device:
                    # The row changes only after the guest let go: a refusal leaves it attached, as it is.
                    await self._gateway(live).detach_volume(live.id, row.device)
                await self._mark_detached(row.id)
            op.after = volume_summary(await self.get(row.id))
            return {"volume_id": row.id}

        await self.deps.runner.run(ctx, "volume.detach", f"volume/{row.name}", work)
        return await self.get(row.id)

    # ------------------------------------------------------------------ snapshots
    _check_snapshot = staticmethod(check_snapshot_name)

    async def snapshots(self, ref: str) -> list[DiskSnapshot]:
        row = await self.get(ref)
        return await self._storage((await self._store(row)).snapshot_list(disk_id_of(row)))

    async def snapshot_create(self, ctx: RequestContext, ref: str, snapshot: str) -> DiskSnapshot:
        """Taken while detached, so the guest's page cache cannot hold unwritten data."""
        async with self.deps.runner.validating(ctx, "volume.snapshot.create", f"volume/{ref}"):
            row = await self.get(ref)
            self._check_snapshot(snapshot)
            await self._refuse_attached(row, "snapshot")
            if any(
                s.name == snapshot for s in await self._storage((await self._store(row)).snapshot_list(disk_id_of(row)))
            ):
                raise Conflict(f"volume {row.name!r} already has a snapshot {snapshot!r}")
        made: list[DiskSnapshot] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            made.append(await self._storage((await self._store(row)).snapshot_create(disk_id_of(row), snapshot)))
            op.after = {"snapshot": snapshot}
            return {"volume_id": row.id, "snapshot": snapshot}

        await self.deps.runner.run(ctx, "volume.snapshot.create", f"volume/{row.name}", work)
        return made[0]

    async def _existing_snapshot(self, row: VolumeRow, snapshot: str) -> None:
        if not any(
            s.name == snapshot for s in await self._storage((await self._store(row)).snapshot_list(disk_id_of(row)))
        ):
            raise NotFound(f"volume {row.name!r} has no snapshot {snapshot!r}")

    async def snapshot_rollback(self, ctx: RequestContext, ref: str, snapshot: str) -> None:
        async with self.deps.runner.validating(ctx, "volume.snapshot.rollback", f"volume/{ref}"):
            row = await self.get(ref)
            await self._refuse_attached(row, "roll back")
            await self._existing_snapshot(row, snapshot)

        async def work(op: OperationHandle) -> dict[str, Any]:
            await self._storage((await self._store(row)).snapshot_rollback(disk_id_of(row), snapshot))
            op.after = {"rolled_back_to": snapshot}
            return {"volume_id": row.id, "snapshot": snapshot}

        await self.deps.runner.run(ctx, "volume.snapshot.rollback", f"volume/{row.name}", work)

    async def snapshot_delete(self, ctx: RequestContext, ref: str, snapshot: str) -> None:
        async with self.deps.runner.validating(ctx, "volume.snapshot.delete", f"volume/{ref}"):
            row = await self.get(ref)
            await self._existing_snapshot(row, snapshot)

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = {"snapshot": snapshot}
            await self._storage((await self._store(row)).snapshot_delete(disk_id_of(row), snapshot))
            return {"volume_id": row.id, "snapshot": snapshot}

        await self.deps.runner.run(ctx, "volume.snapshot.delete", f"volume/{row.name}", work)

    async def flatten(self, ctx: RequestContext, ref: str) -> None:
        async with self.deps.runner.validating(ctx, "volume.flatten", f"volume/{ref}"):
            row = await self.get(ref)

        async def work(op: OperationHandle) -> dict[str, Any]:
            await self._storage((await self._store(row)).flatten_disk(disk_id_of(row)))
            return {"volume_id": row.id}

        await self.deps.runner.run(ctx, "volume.flatten", f"volume/{row.name}", work)

    # ------------------------------------------------------------------ export / import
    async def export(
        self, ctx: RequestContext, ref: str, snapshot: str | None = None
    ) -> tuple[int, AsyncIterator[bytes]]:
        """Check everything first (so errors are a clean 4xx), then hand back (size, byte stream)."""
        async with self.deps.runner.validating(ctx, "volume.export", f"volume/{ref}"):
            row = await self.get(ref)
            if snapshot is not None:
                await self._existing_snapshot(row, snapshot)
                snaps = await self._storage((await self._store(row)).snapshot_list(disk_id_of(row)))
                size = next(s.size_bytes for s in snaps if s.name == snapshot)
            else:
                await self._refuse_attached(row, "export (export a snapshot instead)")
                size = row.size_bytes
        try:
            stream = (await self._store(row)).export_disk(disk_id_of(row), snapshot=snapshot)
        except NotImplementedError as exc:
            raise Invalid(str(exc)) from None
        return size, stream

    async def import_(
        self, ctx: RequestContext, name: str, chunks: AsyncIterator[bytes], pool: str | None = None
    ) -> VolumeRow:
        """A new volume from a raw byte stream; a broken stream leaves neither row nor disk."""
        target = f"volume/{name}"
        async with self.deps.runner.validating(ctx, "volume.import", target):
            self._check_name(name)
            row = await self._insert(name, 0, pool)
        limit = MAX_VOLUME_BYTES

        async def bounded() -> AsyncIterator[bytes]:
            received = 0
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise Invalid(f"the import is larger than the limit of {limit} bytes")
                yield chunk

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.undo.push("remove the volume row", lambda: self._remove_row(row.id))
            store = await self._store(row)
            op.undo.push("delete the partial disk", lambda: store.delete_disk(disk_id_of(row)))
            disk = await self._storage(store.import_disk(disk_id_of(row), bounded()))
            if disk.virtual_size_bytes % 512:
                raise Invalid(f"the import is {disk.virtual_size_bytes} bytes, not a whole number of 512-byte sectors")
            await self._set_disk(row.id, disk)
            op.after = volume_summary(await self.get(row.id))
            return {"volume_id": row.id}

        await self.deps.runner.run(ctx, "volume.import", target, work)
        return await self.get(row.id)

    # ------------------------------------------------------------------ helpers
    async def _refuse_attached(self, row: VolumeRow, action: str) -> None:
        if row.vm_id is not None:
            vm = await self.vm_name(row)
            raise Conflict(f"volume {row.name!r} is attached to VM {vm or row.vm_id!r}; detach it to {action}")

    _storage = staticmethod(storage_step)

    @asynccontextmanager
    async def _vm_lock(self, vm_id: str | None) -> AsyncIterator[None]:
        """Hold the VM's operation lock, so a start, stop or delete cannot interleave."""
        if vm_id is None:
            yield
            return
        async with self.deps.db.read() as session:
            vm = await session.get(VmRow, vm_id)
        if vm is None:
            yield
            return
        async with self.deps.runner.lock_for(f"vm/{vm.name}"):
            yield

    async def _vm(self, vm_id: str) -> VmRow:
        async with self.deps.db.read() as session:
            vm = await session.get(VmRow, vm_id)
        if vm is None:
            raise NotFound(f"VM {vm_id!r} not found")
        return vm

    def _gateway(self, vm: VmRow) -> NodeGateway:
        if vm.node is None:
            raise Conflict(f"VM {vm.name!r} has no node")
        try:
            return self.deps.nodes.gateway(vm.node)
        except LookupError:
            raise Conflict(f"node {vm.node!r} of VM {vm.name!r} is not reachable") from None

    async def _mark_detached(self, volume_id: str) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(VolumeRow, volume_id)
            if row is not None:
                row.vm_id, row.device, row.state = None, None, "available"

    async def _set_disk(self, volume_id: str, disk: StoredDisk) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(VolumeRow, volume_id)
            assert row is not None
            row.path, row.format, row.size_bytes = disk.path, disk.format, disk.virtual_size_bytes
            if row.state == "creating":
                row.state = "available"

    async def _remove_row(self, volume_id: str) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(VolumeRow, volume_id)
            if row is not None:
                await session.delete(row)
