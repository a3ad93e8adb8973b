from __future__ import annotations

from fastapi import APIRouter, Response, status

from bramble.api import convert, schemas
from bramble.api.deps import CloudDep, ContextDep

router = APIRouter(prefix="/v1/flavors", tags=["flavors"])


@router.get("", response_model=list[schemas.Flavor])
async def list_flavors(cloud: CloudDep, ctx: ContextDep) -> list[schemas.Flavor]:
    return [convert.flavor(row) for row in await cloud.flavors.list_all()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.Flavor)
async def create_flavor(body: schemas.FlavorCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Flavor:
    row = await cloud.flavors.create(ctx, body.name, body.cpus, body.memory_mib, body.disk_gib)
    return convert.flavor(row)


@router.get("/{ref}", response_model=schemas.Flavor)
async def show_flavor(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Flavor:
    return convert.flavor(await cloud.flavors.get(ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_flavor(ref: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    await cloud.flavors.delete(ctx, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
