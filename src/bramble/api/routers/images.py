from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from bramble.api import convert, schemas
from bramble.api.deps import CloudDep, ContextDep

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.get("", response_model=list[schemas.Image])
async def list_images(cloud: CloudDep, ctx: ContextDep) -> list[schemas.Image]:
    return [convert.image(row) for row in await cloud.images.list_all()]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.Image | schemas.Accepted,
    responses={202: {"model": schemas.Accepted, "description": "the server downloads the URLs"}},
)
async def create_image(body: schemas.ImageCreate, cloud: CloudDep, ctx: ContextDep) -> object:
    """Register an image. Without URLs upload its parts, then activate it."""
    row, op = await cloud.images.create(
        ctx,
        name=body.name,
        arch=body.arch,
        cmdline=body.cmdline,
        source_url=body.source_url,
        kernel_url=body.source_kernel_url,
        initrd_url=body.source_initrd_url,
        pool=body.pool,
    )
    if op is None:
        return convert.image(row)
    accepted = schemas.Accepted(operation=convert.operation(op), image=convert.image(row))
    return JSONResponse(accepted.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)


@router.get("/{ref}", response_model=schemas.Image)
async def show_image(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Image:
    return convert.image(await cloud.images.get(ref))


@router.put("/{ref}/data/{part}", status_code=status.HTTP_200_OK)
async def upload_image_part(ref: str, part: str, request: Request, cloud: CloudDep, ctx: ContextDep) -> dict[str, int]:
    """Stream one part (disk, kernel or initrd) as the raw request body."""

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    written = await cloud.images.upload(ctx, ref, part, chunks())
    return {"bytes": written}


@router.post("/{ref}/activate", response_model=schemas.Image)
async def activate_image(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Image:
    return convert.image(await cloud.images.activate(ctx, ref))


@router.get("/{ref}/export")
async def export_image(ref: str, cloud: CloudDep, ctx: ContextDep) -> StreamingResponse:
    """The image's disk as raw bytes (a qcow2 comes out converted); Content-Length for progress bars."""
    size, stream = await cloud.images.export(ctx, ref)
    return StreamingResponse(stream, media_type="application/octet-stream", headers={"Content-Length": str(size)})


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_image(ref: str, cloud: CloudDep, ctx: ContextDep, flatten: bool = False) -> Response:
    """Refused (409, naming them) while VM disks are cloned from it, unless ``flatten``: then each
    is flattened first, and a failure names the disk and deletes nothing."""
    await cloud.images.delete(ctx, ref, flatten=flatten)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
