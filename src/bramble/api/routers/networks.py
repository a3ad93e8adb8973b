"""VM networks: create, list, show (with the NICs on it), delete (refused while in use)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from bramble.api import convert, schemas
from bramble.api.deps import CloudDep, ContextDep
from bramble.core.networks import NetworkRequest

router = APIRouter(prefix="/v1/networks", tags=["networks"])


@router.get("", response_model=list[schemas.Network])
async def list_networks(cloud: CloudDep, ctx: ContextDep) -> list[schemas.Network]:
    return [convert.network(row, count) for row, count in await cloud.networks.list_all()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.Network)
async def create_network(body: schemas.NetworkCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Network:
    """Validated against the other networks (overlap: 409; malformed CIDR or gateway outside it: 422)."""
    request = NetworkRequest(**{**body.model_dump(), "dns": tuple(body.dns)})
    return convert.network(await cloud.networks.create(ctx, request))


@router.get("/{ref}", response_model=schemas.Network)
async def show_network(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Network:
    row = await cloud.networks.get(ref)
    return convert.network(row, ports=await cloud.networks.ports(row.id))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_network(ref: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    """409 naming the VMs while any NIC is on it."""
    await cloud.networks.delete(ctx, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
