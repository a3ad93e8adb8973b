"""VM lifecycle: create, start, stop, reboot, pause, resume, delete, console.

Each request is validated first (a 4xx before anything changes), then runs as an
operation whose steps register their undo: a create that fails at QEMU start removes
the disk and the row it made, so nothing is left half-created.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bramble.compute.arch import UnknownArch, canonical_arch, get_profile
from bramble.compute.driver import (
    CloudInit,
    ConsoleData,
    DiskAttachment,
    NicAttachment,
    PowerState,
    VmRuntime,
    VmSpec,
)
from bramble.core.context import SYSTEM, RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid, NoCapacity, NotFound
from bramble.core.gateway import NodeGateway
from bramble.core.images import stored_image
from bramble.core.networks import NetworkService, NicRequest, attachments_by_vm, nics_by_vm
from bramble.core.operations import OperationHandle
from bramble.core.pools import check_same_pool, pool_spec, resolve_pool, spec_of
from bramble.core.secgroups import SecurityGroupService
from bramble.core.vm_snapshots import VmDiskService
from bramble.core.volumes import attached_volumes
from bramble.db.models import (
    FlavorRow,
    ImageRow,
    KeypairRow,
    NetworkRow,
    NicRow,
    NicSecurityGroupRow,
    NodeRow,
    OperationRow,
    SecurityGroupRow,
    StoragePoolRow,
    VmRow,
    VolumeRow,
    utcnow,
)
from bramble.scheduler.placement import NodeCapacity, NoPlacement, PlacementRequest, place

GIB = 1024**3
ACTIONS = ("start", "stop", "reboot", "pause", "resume")
MAX_USER_DATA = 64 * 1024  # as EC2: user-data is for bootstrapping, not for shipping files


@dataclass(frozen=True)
class VmRequest:
    name: str
    image: str
    flavor: str | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None
    arch: str | None = None
    start: bool = True
    nics: tuple[NicRequest, ...] = ()
    security_groups: tuple[str, ...] = ()  # names or ids, for every NIC; none: the default group
    key: str | None = None  # keypair name or id; its public key is copied into the VM
    user_data: str | None = None  # cloud-init user-data, at most MAX_USER_DATA bytes of UTF-8
    pool: str | None = None  # storage pool of the VM's disk; default: the image's pool
    cache: bool | None = None  # disk as an overlay on the node's cache tier; None: [storage] cache


def vm_summary(row: VmRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "state": row.state,
        "desired_state": row.desired_state,
        "arch": row.arch,
        "cpus": row.cpus,
        "memory_mib": row.memory_mib,
        "disk_gib": row.disk_gib,
        "node": row.node,
        "pid": row.pid,
        "pool": row.pool,
        "cache": row.cache,
    }


def vm_spec(
    row: VmRow,
    image: ImageRow | None,
    nics: Sequence[NicAttachment] = (),
    volumes: Sequence[DiskAttachment] = (),
) -> VmSpec:
    """The driver's view of a VM, derived from its row and image every time (never stored)."""
    disks: list[DiskAttachment] = []
    if row.disk_path:
        # Local disks are qcow2 overlays; RBD clones (``rbd:pool/image...``) are raw images.
        disks.append(DiskAttachment(path=row.disk_path, format="raw" if row.disk_path.startswith("rbd:") else "qcow2"))
    disks.extend(volumes)  # attached volumes follow the root disk: vdb, vdc, ...
    if image is not None and image.format == "iso" and image.path:
        disks.append(DiskAttachment(path=image.path, format="raw", media="cdrom", readonly=True))
    return VmSpec(
        vm_id=row.id,
        name=row.name,
        arch=row.arch,
        cpus=row.cpus,
        memory_mib=row.memory_mib,
        disks=tuple(disks),
        kernel=image.kernel_path if image else None,
        initrd=image.initrd_path if image else None,
        cmdline=image.cmdline if image else None,
        vnc_display=row.vnc_display,
        nics=tuple(nics),
        cloud_init=CloudInit(
            instance_id=row.id,
            hostname=row.name,
            public_keys=(row.ssh_public_key,) if row.ssh_public_key else (),
            user_data=row.user_data,
        ),
    )


class VmService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps
        self.networks = NetworkService(deps)
        self.secgroups = SecurityGroupService(deps)
        self.disks = VmDiskService(deps)  # snapshots and flatten of the root disk

    # ------------------------------------------------------------------ reading
    async def list_all(self) -> list[tuple[VmRow, ImageRow | None, FlavorRow | None]]:
        async with self.deps.db.read() as session:
            stmt = (
                select(VmRow, ImageRow, FlavorRow)
                .outerjoin(ImageRow, VmRow.image_id == ImageRow.id)
                .outerjoin(FlavorRow, VmRow.flavor_id == FlavorRow.id)
                .order_by(VmRow.name)
            )
            return [(vm, image, flavor) for vm, image, flavor in (await session.execute(stmt)).all()]

    async def get(self, ref: str) -> tuple[VmRow, ImageRow | None, FlavorRow | None]:
        async with self.deps.db.read() as session:
            vm = await find_by_ref(session, VmRow, ref, "VM")
            image = await session.get(ImageRow, vm.image_id) if vm.image_id else None
            flavor = await session.get(FlavorRow, vm.flavor_id) if vm.flavor_id else None
            return vm, image, flavor

    async def nics(self, vm_ids: Sequence[str] | None = None) -> dict[str, list[tuple[NicRow, NetworkRow]]]:
        """(NIC, network) rows per VM id, in guest order."""
        async with self.deps.db.read() as session:
            return dict(await nics_by_vm(session, vm_ids))

    async def volumes(self, vm_ids: Sequence[str] | None = None) -> dict[str, list[VolumeRow]]:
        """Attached volumes per VM id (all VMs when ``vm_ids`` is None), by device, for ``vm show``."""
        stmt = select(VolumeRow).where(VolumeRow.vm_id.is_not(None))
        if vm_ids is not None:
            stmt = stmt.where(VolumeRow.vm_id.in_(list(vm_ids)))
        result: dict[str, list[VolumeRow]] = {}
        async with self.deps.db.read() as session:
            for row in (await session.scalars(stmt.order_by(VolumeRow.device, VolumeRow.name))).all():
                assert row.vm_id is not None
                result.setdefault(row.vm_id, []).append(row)
        return result

    async def spec(self, row: VmRow, image: ImageRow | None) -> VmSpec:
        """The driver's view of a VM with its NICs read fresh."""
        async with self.deps.db.read() as session:
            nics = (await attachments_by_vm(session, [row.id])).get(row.id, [])
            volumes = await attached_volumes(session, row.id)
        return vm_spec(row, image, nics, volumes)

    def _gateway(self, row: VmRow) -> NodeGateway:
        if row.node is None:
            raise Conflict(f"VM {row.name!r} has no node")
        try:
            return self.deps.nodes.gateway(row.node)
        except LookupError:
            raise Conflict(f"node {row.node!r} of VM {row.name!r} is not reachable") from None

    # ------------------------------------------------------------------ create
    async def create(self, ctx: RequestContext, req: VmRequest) -> tuple[VmRow, OperationRow]:
        target = f"vm/{req.name}"
        async with self.deps.runner.validating(ctx, "vm.create", target):
            row, image = await self._validate_and_insert(req)

        guest_ran = False  # a guest that never ran never used its addresses: no quarantine for them

        async def work(op: OperationHandle) -> dict[str, Any]:
            nonlocal guest_ran
            op.undo.push("remove the VM row", lambda: self._delete_row(row.id, quarantine=guest_ran))
            gateway = self._gateway(row)
            await op.progress(10, "creating disk")
            pool = await spec_of(self.deps, row.pool)
            if row.cache == "on":
                precache = int(pool.precache_gib * GIB)
                stored = stored_image(image)
                disk = await gateway.prepare_cached_disk(row.id, stored, row.disk_gib * GIB, pool, precache)
            else:
                disk = await gateway.prepare_disk(row.id, stored_image(image), row.disk_gib * GIB, pool)
            op.undo.push("delete the disk", lambda: gateway.delete_disk(row.id, pool))
            await self._update(row.id, disk_path=disk.path)
            row.disk_path = disk.path
            if req.start:
                await op.progress(40, "starting")
                op.undo.push("stop the QEMU process", lambda: gateway.destroy_vm(row.id))
                runtime = await gateway.start_vm(await self.spec(row, image))
                guest_ran = True
                await self._apply_runtime(row.id, runtime, state="running")
            else:
                await self._update(row.id, state="stopped", state_reason="created without starting")
            if req.nics:
                await self.secgroups.refresh_nodes()  # other nodes' remote-group sets gain its addresses
            current = await self._reload(row.id)
            op.after = vm_summary(current)
            return {"vm_id": row.id}

        op_row = await self.deps.runner.submit(ctx, "vm.create", target, work)
        return row, op_row

    async def _validate_and_insert(self, req: VmRequest) -> tuple[VmRow, ImageRow]:
        async with self.deps.db.read() as session:
            image = await find_by_ref(session, ImageRow, req.image, "image")
            flavor = await find_by_ref(session, FlavorRow, req.flavor, "flavor") if req.flavor else None
            networks = await self.networks.resolve(session, req.nics)  # unknown: a 404 before anything
            groups = [await find_by_ref(session, SecurityGroupRow, g, "security group") for g in req.security_groups]
            keypair = await find_by_ref(session, KeypairRow, req.key, "keypair") if req.key else None
            image_pool = await resolve_pool(session, image.pool)
            disk_pool = await resolve_pool(session, req.pool) if req.pool is not None else image_pool
        if req.user_data is not None and len(req.user_data.encode()) > MAX_USER_DATA:
            raise Invalid(f"user-data is {len(req.user_data.encode())} bytes; at most {MAX_USER_DATA} are allowed")
        if groups and not req.nics:
            raise Invalid("security groups apply to NICs; give --net as well")
        if image.status != "active":
            raise Conflict(f"image {image.name!r} is {image.status}, not active")
        check_same_pool(image, pool_spec(image_pool), pool_spec(disk_pool))
        cache = self._cache_choice(req, image, disk_pool)
        cpus = req.cpus or (flavor.cpus if flavor else None)
        memory = req.memory_mib or (flavor.memory_mib if flavor else None)
        disk = req.disk_gib or (flavor.disk_gib if flavor else None)
        if cpus is None or memory is None or disk is None:
            raise Invalid("give a flavor, or all of cpus, memory and disk size")
        try:
            arch = canonical_arch(req.arch or image.arch)
        except UnknownArch as exc:
            raise Invalid(str(exc)) from None
        if arch != image.arch:
            raise Invalid(f"image {image.name!r} is for {image.arch}, not {arch}")
        profile = get_profile(arch)
        if memory < profile.min_memory_mib:
            raise Invalid(f"{arch} guests need at least {profile.min_memory_mib} MiB of memory, {memory} asked")
        needed_gib = math.ceil((image.virtual_size_bytes or 0) / GIB)
        if image.format != "iso" and disk < needed_gib:
            raise Invalid(f"disk of {disk} GiB is smaller than image {image.name!r} ({needed_gib} GiB)")
        row = VmRow(
            id=str(uuid.uuid4()),
            name=req.name,
            arch=arch,
            cpus=cpus,
            memory_mib=memory,
            disk_gib=disk,
            image_id=image.id,
            flavor_id=flavor.id if flavor else None,
            desired_state="running" if req.start else "stopped",
            state="creating",
            key_name=keypair.name if keypair else None,
            ssh_public_key=keypair.public_key if keypair else None,
            user_data=req.user_data,
            pool=disk_pool.name,
            cache="on" if cache else "off",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        try:
            # Capacity, name and VNC display are decided in the same write transaction as
            # the insert, so concurrent creates cannot all claim the same free memory.
            async with self.deps.db.write() as session:
                await self.deps.db.serialize(session, "vm-placement")
                if await session.scalar(select(VmRow.id).where(VmRow.name == req.name)):
                    raise Conflict(f"a VM named {req.name!r} already exists")
                await resolve_pool(session, row.pool)  # still there: a pool delete cannot miss this disk
                row.node = await self._place(session, arch, cpus, memory)
                row.vnc_display = await self._free_vnc_display(session)
                session.add(row)
                if req.nics:
                    # Addresses are decided under the same lock as the insert (see NetworkService.allocate).
                    await session.flush()
                    nics = await self.networks.allocate(session, row.id, req.nics, networks)
                    group_ids = [g.id for g in groups] or [(await self.secgroups.ensure_default(session)).id]
                    session.add_all(
                        [NicSecurityGroupRow(nic_id=n.id, group_id=g) for n in nics for g in dict.fromkeys(group_ids)]
                    )
        except IntegrityError:
            raise Conflict(f"a VM named {req.name!r} already exists") from None
        return row, image

    def _cache_choice(self, req: VmRequest, image: ImageRow, pool: StoragePoolRow) -> bool:
        """Whether the VM's disk goes on the node cache tier: asked for, else the pool's default where
        it can apply (an RBD pool, a disk image). Asked for where it cannot: a 422."""
        driver = pool.driver
        if req.cache is None:
            return pool.cache == "on" and driver == "rbd" and image.format != "iso"
        if req.cache and driver != "rbd":
            raise Invalid(f"the cache tier fronts RBD images; pool {pool.name!r} uses the {driver} driver")
        if req.cache and image.format == "iso":
            raise Invalid(f"image {image.name!r} is an ISO (attached as a CD-ROM): there is no disk to cache")
        return req.cache

    # ------------------------------------------------------------------ cache tier
    async def drop_cache(self, ctx: RequestContext, ref: str) -> OperationRow:
        """Move the VM's disk from its node-local overlay into an RBD clone (running or not)."""
        async with self.deps.runner.validating(ctx, "vm.cache_drop", f"vm/{ref}"):
            row, image, _ = await self.get(ref)
            if row.cache != "on":
                raise Conflict(f"VM {row.name!r} has no cached disk (its disk is in its pool already)")
            if row.state in ("creating", "deleting"):
                raise Conflict(f"VM {row.name!r} is {row.state}; drop its cache when that finishes")
            if image is None:
                raise Conflict(f"the image of VM {row.name!r} is gone; its overlay cannot be moved into Ceph")

        async def work(op: OperationHandle) -> dict[str, Any]:
            vm, image_row, _ = await self.get(row.id)
            assert image_row is not None
            op.before = vm_summary(vm)
            gateway = self._gateway(vm)
            disk = await gateway.drop_cache(vm.id, stored_image(image_row), await spec_of(self.deps, vm.pool))
            await self._update(vm.id, disk_path=disk.path, cache="off")
            op.after = vm_summary(await self._reload(vm.id))
            return {"vm_id": vm.id, "disk": disk.path}

        return await self.deps.runner.submit(ctx, "vm.cache_drop", f"vm/{row.name}", work)

    async def cache_stats(self, row: VmRow, image: ImageRow | None) -> dict[str, Any] | None:
        """The node's figures for a VM's cached disk (None: not cached, or the node does not answer)."""
        if row.cache != "on" or row.node is None:
            return None
        try:
            return await self._gateway(row).cache_stats(await self.spec(row, image))
        except Exception:  # figures are best effort: `vm show` must work with the node away
            return None

    async def _place(self, session: AsyncSession, arch: str, cpus: int, memory: int) -> str:
        compute = self.deps.settings.compute
        nodes = list((await session.scalars(select(NodeRow))).all())
        usage = {
            node: (int(used_cpus or 0), int(used_mem or 0))
            for node, used_cpus, used_mem in (
                await session.execute(
                    select(VmRow.node, func.sum(VmRow.cpus), func.sum(VmRow.memory_mib))
                    .where(VmRow.desired_state != "stopped")
                    .group_by(VmRow.node)
                )
            ).all()
        }
        capacities = [
            NodeCapacity(
                name=n.name,
                arch=n.arch,
                accel=n.accel,
                cpus=n.cpus,
                memory_mib=n.memory_mib,
                used_cpus=usage.get(n.name, (0, 0))[0],
                used_memory_mib=usage.get(n.name, (0, 0))[1],
            )
            for n in nodes
        ]
        try:
            return place(
                PlacementRequest(arch=arch, cpus=cpus, memory_mib=memory),
                capacities,
                cpu_overcommit=compute.cpu_overcommit,
                memory_overcommit=compute.memory_overcommit,
            )
        except NoPlacement as exc:
            raise NoCapacity(str(exc)) from None

    async def _free_vnc_display(self, session: AsyncSession) -> int:
        """The lowest free display number, found with the unique index instead of a full scan."""
        first = self.deps.settings.compute.vnc_first_display
        if await session.scalar(select(VmRow.id).where(VmRow.vnc_display == first)) is None:
            return first
        taken = aliased(VmRow)
        gap = await session.scalar(
            select(func.min(VmRow.vnc_display + 1)).where(
                VmRow.vnc_display >= first,
                ~select(taken.id).where(taken.vnc_display == VmRow.vnc_display + 1).exists(),
            )
        )
        return first if gap is None else int(gap)

    # ------------------------------------------------------------------ power actions
    async def act(self, ctx: RequestContext, ref: str, action: str, *, force: bool = False) -> OperationRow:
        target = f"vm/{ref}"
        async with self.deps.runner.validating(ctx, f"vm.{action}", target):
            if action not in ACTIONS:
                raise Invalid(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
            row, _, _ = await self.get(ref)
            self._check_action(row, action)
            target = f"vm/{row.name}"

        async def work(op: OperationHandle) -> dict[str, Any]:
            vm, image, _ = await self.get(row.id)
            op.before = vm_summary(vm)
            self._check_action(vm, action)
            gateway = self._gateway(vm)
            if action == "start":
                await self._update(vm.id, desired_state="running")
                op.undo.push("restore desired state", lambda: self._update(vm.id, desired_state=vm.desired_state))
                runtime = await gateway.start_vm(await self.spec(vm, image))
            elif action == "stop":
                await self._update(vm.id, desired_state="stopped")
                runtime = await gateway.stop_vm(vm.id, force=force)
            elif action == "reboot":
                runtime = await gateway.reboot_vm(vm.id)
            elif action == "pause":
                await self._update(vm.id, desired_state="paused")
                runtime = await gateway.pause_vm(vm.id)
            else:
                await self._update(vm.id, desired_state="running")
                runtime = await gateway.resume_vm(vm.id)
            reason = {"stop": "stopped by " + ctx.actor, "reboot": "rebooted by " + ctx.actor}.get(action)
            await self._apply_runtime(vm.id, runtime, reason=reason)
            op.after = vm_summary(await self._reload(vm.id))
            return {"vm_id": vm.id, "state": runtime.state.value}

        return await self.deps.runner.submit(ctx, f"vm.{action}", target, work)

    @staticmethod
    def _check_action(row: VmRow, action: str) -> None:
        state = row.state
        if state in ("creating", "deleting"):
            raise Conflict(f"VM {row.name!r} is {state}; wait until that finishes")
        allowed = {
            "start": ("stopped", "error", "running"),
            "stop": ("running", "paused", "stopped", "error"),
            "reboot": ("running",),
            "pause": ("running", "paused"),
            "resume": ("paused", "running"),
        }[action]
        if state not in allowed:
            hint = {"reboot": "start it instead", "pause": "start it first", "resume": "start it instead"}
            raise Conflict(f"cannot {action} VM {row.name!r} while it is {state}; {hint.get(action, '')}".rstrip("; "))

    # ------------------------------------------------------------------ delete
    async def delete(self, ctx: RequestContext, ref: str) -> OperationRow:
        async with self.deps.runner.validating(ctx, "vm.delete", f"vm/{ref}"):
            row, _, _ = await self.get(ref)
            if row.state == "creating":
                raise Conflict(f"VM {row.name!r} is being created; delete it when that finishes")
        return await self.deps.runner.submit(ctx, "vm.delete", f"vm/{row.name}", self._delete_work(row.id))

    def _delete_work(self, vm_id: str) -> Any:
        async def work(op: OperationHandle) -> dict[str, Any]:
            vm, _, _ = await self.get(vm_id)
            op.before = vm_summary(vm)
            await self._update(vm.id, state="deleting", desired_state="stopped")
            try:
                gateway = self._gateway(vm)
                await gateway.destroy_vm(vm.id)
                await gateway.delete_disk(vm.id, await spec_of(self.deps, vm.pool))
            except Exception as exc:
                await self._update(vm.id, state="error", state_reason=f"delete failed: {exc}")
                raise
            await self._delete_row(vm.id)
            # Its addresses leave the remote-group sets of the VMs that stay, on every node.
            await self.secgroups.refresh_nodes()
            return {"vm_id": vm.id}

        return work

    async def resume_interrupted_deletes(self) -> int:
        """At start-up: finish deletes that a daemon crash cut short; flag interrupted creates."""

        async with self.deps.db.write() as session:
            creating = list((await session.scalars(select(VmRow).where(VmRow.state == "creating"))).all())
            for vm in creating:
                vm.state = "error"
                vm.state_reason = "creation was interrupted by a daemon restart; delete the VM and create it again"
            deleting = list((await session.scalars(select(VmRow.id).where(VmRow.state == "deleting"))).all())
        for vm_id in deleting:
            await self.deps.runner.submit(SYSTEM, "vm.delete", f"vm/{vm_id}", self._delete_work(vm_id))
        return len(deleting)

    # ------------------------------------------------------------------ console
    async def console(self, ref: str, offset: int | None, tail: int) -> ConsoleData:
        row, _, _ = await self.get(ref)
        if offset is not None and offset < 0:
            raise Invalid("offset must be 0 or more")
        return await self._gateway(row).read_console(row.id, offset, tail)

    # ------------------------------------------------------------------ row helpers
    async def _reload(self, vm_id: str) -> VmRow:
        async with self.deps.db.read() as session:
            row = await session.get(VmRow, vm_id)
            if row is None:
                raise NotFound(f"VM {vm_id} vanished")
            return row

    async def _update(self, vm_id: str, **values: Any) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(VmRow, vm_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    async def _apply_runtime(
        self, vm_id: str, runtime: VmRuntime, *, state: str | None = None, reason: str | None = None
    ) -> None:
        observed = state or state_name(runtime.state)
        values: dict[str, Any] = {
            "state": observed,
            "pid": runtime.pid if observed in ("running", "paused") else None,
            "state_reason": reason or runtime.reason or None,
        }
        if "accel" in runtime.extra:
            values["accel"] = runtime.extra["accel"]
        await self._update(vm_id, **values)

    async def _delete_row(self, vm_id: str, *, quarantine: bool = True) -> None:
        """Remove the VM; its addresses start their quarantine in the same transaction."""
        async with self.deps.db.write() as session:
            row = await session.get(VmRow, vm_id)
            if row is not None:
                await self.networks.release(session, vm_id, quarantine=quarantine)
                await session.delete(row)


def state_name(state: PowerState) -> str:
    """The VM state users see for a power state the driver reports (a crash reads as stopped)."""
    return {
        PowerState.RUNNING: "running",
        PowerState.PAUSED: "paused",
        PowerState.STOPPED: "stopped",
        PowerState.CRASHED: "stopped",
    }[state]
