"""Nodes, events, operations and health."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from bramble import __version__
from bramble.api import convert, schemas
from bramble.api.deps import CloudDep, ContextDep

router = APIRouter(tags=["system"])


@router.get("/v1/health", response_model=schemas.HealthInfo)
async def health() -> schemas.HealthInfo:
    return schemas.HealthInfo(status="ok", version=__version__)


@router.get("/v1/nodes", response_model=list[schemas.Node])
async def list_nodes(cloud: CloudDep, ctx: ContextDep) -> list[schemas.Node]:
    return [convert.node(row, vms, up) for row, vms, up in await cloud.nodes.list_all()]


@router.get("/v1/events", response_model=list[schemas.Event])
async def list_events(
    cloud: CloudDep,
    ctx: ContextDep,
    target: Annotated[str | None, Query(description="kind/name, e.g. vm/web1")] = None,
    action: Annotated[str | None, Query(description="e.g. vm.create, or vm.* for all VM actions")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601 time")] = None,
    request_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[schemas.Event]:
    rows = await cloud.events(target=target, action=action, since=since, request_id=request_id, limit=limit)
    return [convert.event(row) for row in rows]


@router.get("/v1/operations/{op_id}", response_model=schemas.Operation)
async def show_operation(op_id: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Operation:
    return convert.operation(await cloud.operation(op_id))
