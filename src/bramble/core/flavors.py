"""Named VM sizes."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict
from bramble.core.operations import OperationHandle
from bramble.db.models import FlavorRow


def flavor_summary(row: FlavorRow) -> dict[str, object]:
    return {"name": row.name, "cpus": row.cpus, "memory_mib": row.memory_mib, "disk_gib": row.disk_gib}


class FlavorService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    async def list_all(self) -> list[FlavorRow]:
        async with self.deps.db.read() as session:
            return list((await session.scalars(select(FlavorRow).order_by(FlavorRow.name))).all())

    async def get(self, ref: str) -> FlavorRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, FlavorRow, ref, "flavor")

    async def create(self, ctx: RequestContext, name: str, cpus: int, memory_mib: int, disk_gib: int) -> FlavorRow:
        row = FlavorRow(id=str(uuid.uuid4()), name=name, cpus=cpus, memory_mib=memory_mib, disk_gib=disk_gib)

        async def work(op: OperationHandle) -> dict[str, object]:
            try:
                async with self.deps.db.write() as session:
                    if await session.scalar(select(FlavorRow.id).where(FlavorRow.name == name)):
                        raise Conflict(f"flavor {name!r} already exists")
                    session.add(row)
            except IntegrityError:
                raise Conflict(f"flavor {name!r} already exists") from None
            op.after = flavor_summary(row)
            return {"flavor_id": row.id}

        await self.deps.runner.run(ctx, "flavor.create", f"flavor/{name}", work)
        return row

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        target = f"flavor/{ref}"
        async with self.deps.runner.validating(ctx, "flavor.delete", target):
            row = await self.get(ref)

        async def work(op: OperationHandle) -> None:
            async with self.deps.db.write() as session:
                current = await session.get(FlavorRow, row.id)
                if current is not None:
                    await session.delete(current)
            op.before = flavor_summary(row)

        # VMs keep their own copy of the sizes, so a flavor in use may go (as in Nova).
        await self.deps.runner.run(ctx, "flavor.delete", f"flavor/{row.name}", work)
