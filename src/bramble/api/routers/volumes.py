"""Volumes: create, attach to a VM, snapshot, export and import as raw byte streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bramble.api.deps import CloudDep, ContextDep
from bramble.core.errors import Invalid
from bramble.core.volumes import volume_state
from bramble.db.models import VolumeRow
from bramble.storage.driver import DiskSnapshot

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumeCreate(_Body):
    name: str = Field(min_length=1, max_length=63)
    size_bytes: int = Field(gt=0)
    pool: str | None = None


class VolumeAttach(_Body):
    vm: str = Field(min_length=1)


class VolumeResize(_Body):
    size_bytes: int = Field(gt=0)


class SnapshotCreate(_Body):
    name: str = Field(min_length=1, max_length=63)


class Volume(BaseModel):
    id: str
    name: str
    size_bytes: int
    driver: str
    pool: str | None
    format: str
    state: str
    vm: str | None
    device: str | None
    created_at: datetime


class Snapshot(BaseModel):
    name: str
    size_bytes: int
    created: datetime | None


def _volume(row: VolumeRow, vm: str | None) -> Volume:
    return Volume(
        id=row.id,
        name=row.name,
        size_bytes=row.size_bytes,
        driver=row.driver,
        pool=row.pool,
        format=row.format,
        state=volume_state(row),
        vm=vm,
        device=row.device,
        created_at=row.created_at,
    )


def _snapshot(snap: DiskSnapshot) -> Snapshot:
    return Snapshot(name=snap.name, size_bytes=snap.size_bytes, created=snap.created)


async def _shown(cloud: CloudDep, row: VolumeRow) -> Volume:
    return _volume(row, await cloud.volumes.vm_name(row))


@router.get("", response_model=list[Volume])
async def list_volumes(cloud: CloudDep, ctx: ContextDep) -> list[Volume]:
    return [_volume(row, vm) for row, vm in await cloud.volumes.list_all()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Volume)
async def create_volume(body: VolumeCreate, cloud: CloudDep, ctx: ContextDep) -> Volume:
    return await _shown(cloud, await cloud.volumes.create(ctx, body.name, body.size_bytes, body.pool))


@router.get("/{ref}", response_model=Volume)
async def show_volume(ref: str, cloud: CloudDep, ctx: ContextDep) -> Volume:
    return await _shown(cloud, await cloud.volumes.get(ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_volume(ref: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    """409 naming the VM while the volume is attached."""
    await cloud.volumes.delete(ctx, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/attach", response_model=Volume)
async def attach_volume(ref: str, body: VolumeAttach, cloud: CloudDep, ctx: ContextDep) -> Volume:
    return await _shown(cloud, await cloud.volumes.attach(ctx, ref, body.vm))


@router.post("/{ref}/detach", response_model=Volume)
async def detach_volume(ref: str, cloud: CloudDep, ctx: ContextDep) -> Volume:
    return await _shown(cloud, await cloud.volumes.detach(ctx, ref))


@router.post("/{ref}/resize", response_model=Volume)
async def resize_volume(ref: str, body: VolumeResize, cloud: CloudDep, ctx: ContextDep) -> Volume:
    return await _shown(cloud, await cloud.volumes.resize(ctx, ref, body.size_bytes))


@router.post("/{ref}/flatten", response_model=Volume)
async def flatten_volume(ref: str, cloud: CloudDep, ctx: ContextDep) -> Volume:
    await cloud.volumes.flatten(ctx, ref)
    return await _shown(cloud, await cloud.volumes.get(ref))


@router.get("/{ref}/snapshots", response_model=list[Snapshot])
async def list_snapshots(ref: str, cloud: CloudDep, ctx: ContextDep) -> list[Snapshot]:
    return [_snapshot(s) for s in await cloud.volumes.snapshots(ref)]


@router.post("/{ref}/snapshots", status_code=status.HTTP_201_CREATED, response_model=Snapshot)
async def create_snapshot(ref: str, body: SnapshotCreate, cloud: CloudDep, ctx: ContextDep) -> Snapshot:
    return _snapshot(await cloud.volumes.snapshot_create(ctx, ref, body.name))


@router.post("/{ref}/snapshots/{snapshot}/rollback", status_code=status.HTTP_204_NO_CONTENT)
async def rollback_snapshot(ref: str, snapshot: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    """Refused (409) while the volume is attached."""
    await cloud.volumes.snapshot_rollback(ctx, ref, snapshot)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{ref}/snapshots/{snapshot}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(ref: str, snapshot: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    await cloud.volumes.snapshot_delete(ctx, ref, snapshot)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{ref}/export")
async def export_volume(ref: str, cloud: CloudDep, ctx: ContextDep, snapshot: str | None = None) -> StreamingResponse:
    """The raw bytes (of the volume, or of ``?snapshot=``); Content-Length lets a client show progress."""
    size, stream = await cloud.volumes.export(ctx, ref, snapshot)
    return StreamingResponse(stream, media_type="application/octet-stream", headers={"Content-Length": str(size)})


@router.put("/{name}/import", status_code=status.HTTP_201_CREATED, response_model=Volume)
async def import_volume(
    name: str, request: Request, cloud: CloudDep, ctx: ContextDep, pool: str | None = None
) -> Volume:
    """A new volume named ``name`` from the raw request body."""
    if request.headers.get("content-length") == "0":
        raise Invalid("the import body is empty: send the raw disk bytes")

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return await _shown(cloud, await cloud.volumes.import_(ctx, name, chunks(), pool))
