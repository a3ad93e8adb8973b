"""Security groups and their rules; rule changes reach running VMs at once (one firewall swap per node)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from bramble.api import convert, schemas
from bramble.api.deps import CloudDep, ContextDep
from bramble.core.secgroups import RuleRequest

router = APIRouter(prefix="/v1/security-groups", tags=["security groups"])


@router.get("", response_model=list[schemas.SecurityGroup])
async def list_groups(cloud: CloudDep, ctx: ContextDep) -> list[schemas.SecurityGroup]:
    result = []
    for row in await cloud.secgroups.list_all():
        rules, vms = await cloud.secgroups.details(row.id)
        result.append(convert.security_group(row, rules, vms))
    return result


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.SecurityGroup)
async def create_group(body: schemas.SecurityGroupCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.SecurityGroup:
    row = await cloud.secgroups.create(ctx, body.name, body.description)
    rules, vms = await cloud.secgroups.details(row.id)
    return convert.security_group(row, rules, vms)


@router.get("/{ref}", response_model=schemas.SecurityGroup)
async def show_group(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.SecurityGroup:
    row = await cloud.secgroups.get(ref)
    rules, vms = await cloud.secgroups.details(row.id)
    return convert.security_group(row, rules, vms)


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(ref: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    """409 while NICs are in it (naming the VMs) or other groups' rules refer to it."""
    await cloud.secgroups.delete(ctx, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/rules", status_code=status.HTTP_201_CREATED, response_model=schemas.SecurityGroup)
async def add_rule(
    ref: str, body: schemas.SecurityRuleCreate, cloud: CloudDep, ctx: ContextDep
) -> schemas.SecurityGroup:
    """Add an allow rule; the firewalls of running VMs in the group change before this answers."""
    await cloud.secgroups.add_rule(ctx, ref, RuleRequest(**body.model_dump()))
    return await show_group(ref, cloud, ctx)


@router.delete("/{ref}/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_rule(ref: str, rule_id: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    await cloud.secgroups.delete_rule(ctx, ref, rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
