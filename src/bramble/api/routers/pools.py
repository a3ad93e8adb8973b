"""Storage pools: where images, VM disks and volumes live (local directories, Ceph RBD pools)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from bramble.api.deps import CloudDep, ContextDep
from bramble.core.pools import PoolReport, PoolRequest
from bramble.db.models import StoragePoolRow

router = APIRouter(prefix="/v1/pools", tags=["pools"])


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    driver: str = Field(description="local | rbd (fake: test clouds only)")
    path: str | None = Field(
        default=None, max_length=4096, description="local: directory (default: state_dir/pools/NAME)"
    )
    ceph_conf: str | None = Field(default=None, max_length=4096, description="rbd: ceph.conf path on the nodes")
    ceph_pool: str | None = Field(default=None, max_length=128, description="rbd: the Ceph pool")
    ceph_user: str | None = Field(default=None, max_length=64, description="rbd: client id without 'client.' (bramble)")
    ceph_keyring: str | None = Field(
        default=None, max_length=4096, description="rbd: keyring path (default: the conf's)"
    )
    timeout_seconds: int = Field(default=15, ge=1, le=3600, description="rbd: an unreachable cluster fails after this")
    cache: str = Field(default="off", description="rbd: on: new VMs' disks go on the node cache tier by default")
    precache_gib: float = Field(default=0.0, ge=0, le=65536, description="rbd: GiB of the image read when a VM starts")


class PoolUsageOut(BaseModel):
    used_bytes: int
    capacity_bytes: int | None
    available_bytes: int | None
    raw_used_bytes: int | None = None
    quota_bytes: int | None = None
    source: str


class Pool(BaseModel):
    id: str
    name: str
    driver: str
    is_default: bool
    path: str | None = None
    ceph_conf: str | None = None
    ceph_pool: str | None = None
    ceph_user: str | None = None
    ceph_keyring: str | None = None
    timeout_seconds: int
    cache: str = "off"
    precache_gib: float = 0.0
    created_at: datetime
    # pool show only
    usage: PoolUsageOut | None = None
    usage_error: str | None = None
    images: list[str] | None = None
    vms: list[str] | None = None
    volumes: list[str] | None = None


def _pool(row: StoragePoolRow) -> Pool:
    return Pool.model_validate(row, from_attributes=True)  # the row's columns are the model's fields


def _report(report: PoolReport) -> Pool:
    pool = _pool(report.row)
    if report.usage is not None:
        u = report.usage
        pool.usage = PoolUsageOut(
            used_bytes=u.used_bytes,
            capacity_bytes=u.capacity_bytes,
            available_bytes=u.available_bytes,
            raw_used_bytes=u.raw_used_bytes,
            quota_bytes=u.quota_bytes,
            source=u.source,
        )
    pool.usage_error = report.usage_error
    pool.images, pool.vms, pool.volumes = report.images, report.vms, report.volumes
    return pool


@router.get("", response_model=list[Pool])
async def list_pools(cloud: CloudDep, ctx: ContextDep) -> list[Pool]:
    return [_pool(row) for row in await cloud.pools.list_all()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Pool)
async def create_pool(body: PoolCreate, cloud: CloudDep, ctx: ContextDep) -> Pool:
    """Connects first with the given settings: a wrong key, a missing Ceph pool (422) or an
    unreachable cluster (503, after ``timeout_seconds``) writes nothing."""
    row = await cloud.pools.create(ctx, PoolRequest(**body.model_dump()))
    return _report(await cloud.pools.show(row.id))


@router.get("/{ref}", response_model=Pool)
async def show_pool(ref: str, cloud: CloudDep, ctx: ContextDep) -> Pool:
    """With capacity, usage (and where the figures come from) and what lives in the pool."""
    return _report(await cloud.pools.show(ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_pool(ref: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    """409 for the default pool, and while images, VM disks or volumes live in it (naming them)."""
    await cloud.pools.delete(ctx, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
