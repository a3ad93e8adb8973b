"""Floating IPs: public addresses taken from a network, mapped 1:1 to a VM's NIC (DNAT in, SNAT out)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from bramble.api import schemas
from bramble.api.deps import CloudDep, ContextDep
from bramble.core.floating_ips import FloatingIpInfo

router = APIRouter(prefix="/v1/floating-ips", tags=["floating IPs"])


def _shown(info: FloatingIpInfo) -> schemas.FloatingIp:
    return schemas.FloatingIp(
        id=info.id,
        address=info.address,
        network=info.network,
        vm=info.vm,
        nic=info.nic,
        private_address=info.private_address,
        node=info.node,
        created_at=info.created_at,
    )


@router.get("", response_model=list[schemas.FloatingIp])
async def list_floating_ips(cloud: CloudDep, ctx: ContextDep) -> list[schemas.FloatingIp]:
    return [_shown(info) for info in await cloud.floating_ips.list_all()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.FloatingIp)
async def create_floating_ip(body: schemas.FloatingIpCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.FloatingIp:
    """404 for an unknown network; 422 for an address outside it or not assignable; 409 taken, quarantined, full."""
    return _shown(await cloud.floating_ips.create(ctx, body.network, body.address))


@router.get("/{ref}", response_model=schemas.FloatingIp)
async def show_floating_ip(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.FloatingIp:
    """By address or id."""
    return _shown(await cloud.floating_ips.get(ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_floating_ip(
    ref: str,
    cloud: CloudDep,
    ctx: ContextDep,
    detach: Annotated[bool, Query(description="detach it first when attached (else 409 naming the VM)")] = False,
) -> Response:
    await cloud.floating_ips.delete(ctx, ref, detach=detach)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/attach", response_model=schemas.FloatingIp)
async def attach_floating_ip(
    ref: str, body: schemas.FloatingIpAttach, cloud: CloudDep, ctx: ContextDep
) -> schemas.FloatingIp:
    """Answers once the VM's node maps it (a node that refuses leaves it detached, 5xx with the reason)."""
    return _shown(await cloud.floating_ips.attach(ctx, ref, body.vm, body.nic))


@router.post("/{ref}/detach", response_model=schemas.FloatingIp)
async def detach_floating_ip(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.FloatingIp:
    return _shown(await cloud.floating_ips.detach(ctx, ref))
