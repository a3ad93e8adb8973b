from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from bramble.api import convert, schemas
from bramble.api.deps import CloudDep, ContextDep
from bramble.api.routers.volumes import Snapshot, SnapshotCreate
from bramble.core.networks import NicRequest
from bramble.core.vms import VmRequest
from bramble.db.models import FlavorRow, ImageRow, VmRow

router = APIRouter(prefix="/v1/vms", tags=["vms"])

CONSOLE_TAIL_DEFAULT = 16 * 1024


@router.get("", response_model=list[schemas.Vm])
async def list_vms(cloud: CloudDep, ctx: ContextDep) -> list[schemas.Vm]:
    rows = await cloud.vms.list_all()
    nics = await cloud.vms.nics()
    nic_ids = [nic.id for items in nics.values() for nic, _ in items]
    groups = await cloud.secgroups.groups_of(nic_ids)
    floating = await cloud.floating_ips.by_nic(nic_ids)
    volumes = await cloud.vms.volumes()
    return [
        convert.vm(vm, image, flavor, nics.get(vm.id), groups, floating, volumes.get(vm.id))
        for vm, image, flavor in rows
    ]


async def _with_nics(
    cloud: CloudDep, vm: VmRow, image: ImageRow | None = None, flavor: FlavorRow | None = None
) -> schemas.Vm:
    nics = (await cloud.vms.nics([vm.id])).get(vm.id, [])
    groups = await cloud.secgroups.groups_of([nic.id for nic, _ in nics])
    floating = await cloud.floating_ips.by_nic([nic.id for nic, _ in nics])
    volumes = (await cloud.vms.volumes([vm.id])).get(vm.id, [])
    return convert.vm(vm, image, flavor, nics, groups, floating, volumes)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Accepted)
async def create_vm(body: schemas.VmCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Accepted:
    """Validate at once (4xx on bad input), then create and boot in the background."""
    fields = body.model_dump(exclude={"nics", "security_groups"})
    nics = tuple(NicRequest(network=n.network, address=n.address) for n in body.nics)
    request = VmRequest(**fields, nics=nics, security_groups=tuple(body.security_groups))
    row, op = await cloud.vms.create(ctx, request)
    return schemas.Accepted(operation=convert.operation(op), vm=await _with_nics(cloud, row))


@router.get("/{ref}", response_model=schemas.Vm)
async def show_vm(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Vm:
    vm, image, flavor = await cloud.vms.get(ref)
    shown = await _with_nics(cloud, vm, image, flavor)
    stats = await cloud.vms.cache_stats(vm, image)
    if stats is not None:
        shown.cache_stats = schemas.VmCacheStats.model_validate(stats, from_attributes=False)
    return shown


@router.post("/{ref}/cache/drop", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Accepted)
async def drop_cache(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Accepted:
    """Move the VM's disk from its node-local cache overlay into an RBD clone (a running guest keeps running)."""
    op = await cloud.vms.drop_cache(ctx, ref)
    return schemas.Accepted(operation=convert.operation(op))


@router.get("/{ref}/snapshots", response_model=list[Snapshot])
async def list_snapshots(ref: str, cloud: CloudDep, ctx: ContextDep) -> list[Snapshot]:
    return [
        Snapshot(name=s.name, size_bytes=s.size_bytes, created=s.created) for s in await cloud.vms.disks.snapshots(ref)
    ]


@router.post("/{ref}/snapshots", status_code=status.HTTP_201_CREATED, response_model=Snapshot)
async def create_snapshot(ref: str, body: SnapshotCreate, cloud: CloudDep, ctx: ContextDep) -> Snapshot:
    """Snapshot the VM's disk: RBD also while it runs (crash-consistent); a local qcow2 disk when stopped."""
    snap = await cloud.vms.disks.snapshot_create(ctx, ref, body.name)
    return Snapshot(name=snap.name, size_bytes=snap.size_bytes, created=snap.created)


@router.post("/{ref}/snapshots/{snapshot}/rollback", status_code=status.HTTP_204_NO_CONTENT)
async def rollback_snapshot(ref: str, snapshot: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    """Put the disk back as it was at the snapshot; refused (409) while the VM runs."""
    await cloud.vms.disks.snapshot_rollback(ctx, ref, snapshot)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{ref}/snapshots/{snapshot}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(ref: str, snapshot: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    await cloud.vms.disks.snapshot_delete(ctx, ref, snapshot)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/flatten", response_model=schemas.Vm)
async def flatten_vm(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Vm:
    """Give the VM's disk its own copy of the data it shares with its image."""
    await cloud.vms.disks.flatten(ctx, ref)
    vm, image, flavor = await cloud.vms.get(ref)
    return await _with_nics(cloud, vm, image, flavor)


@router.post("/{ref}/actions/{action}", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Accepted)
async def vm_action(
    ref: str, action: str, cloud: CloudDep, ctx: ContextDep, body: schemas.VmAction | None = None
) -> schemas.Accepted:
    """start, stop (ACPI, then hard after a timeout; force: hard at once), reboot, pause, resume."""
    op = await cloud.vms.act(ctx, ref, action, force=bool(body and body.force))
    return schemas.Accepted(operation=convert.operation(op))


@router.delete("/{ref}", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.Accepted)
async def delete_vm(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Accepted:
    op = await cloud.vms.delete(ctx, ref)
    return schemas.Accepted(operation=convert.operation(op))


@router.get("/{ref}/console", response_model=schemas.ConsoleChunk)
async def console(
    ref: str,
    cloud: CloudDep,
    ctx: ContextDep,
    offset: Annotated[int | None, Query(ge=0, description="read from this byte on")] = None,
    tail: Annotated[int, Query(ge=1, le=4 * 1024 * 1024, description="without offset: the last N bytes")] = (
        CONSOLE_TAIL_DEFAULT
    ),
) -> schemas.ConsoleChunk:
    chunk = await cloud.vms.console(ref, offset, tail)
    return schemas.ConsoleChunk(data=chunk.data.decode(errors="replace"), offset=chunk.offset, size=chunk.size)
