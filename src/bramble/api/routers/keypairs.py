"""SSH keypairs: import a public key or generate a pair (the private key is in that one answer only)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from bramble.api import schemas
from bramble.api.deps import CloudDep, ContextDep
from bramble.db.models import KeypairRow

router = APIRouter(prefix="/v1/keypairs", tags=["keypairs"])


def keypair(row: KeypairRow, private_key: str | None = None) -> schemas.Keypair:
    return schemas.Keypair(
        id=row.id,
        name=row.name,
        public_key=row.public_key,
        fingerprint=row.fingerprint,
        created_at=row.created_at,
        private_key=private_key,
    )


@router.get("", response_model=list[schemas.Keypair])
async def list_keypairs(cloud: CloudDep, ctx: ContextDep) -> list[schemas.Keypair]:
    return [keypair(row) for row in await cloud.keypairs.list_all()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.Keypair)
async def create_keypair(body: schemas.KeypairCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Keypair:
    created = await cloud.keypairs.create(ctx, body.name, body.public_key)
    return keypair(created.row, created.private_key)


@router.get("/{ref}", response_model=schemas.Keypair)
async def show_keypair(ref: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Keypair:
    return keypair(await cloud.keypairs.get(ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_keypair(ref: str, cloud: CloudDep, ctx: ContextDep) -> Response:
    await cloud.keypairs.delete(ctx, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
