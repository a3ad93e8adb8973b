"""The services the API calls, assembled from one set of dependencies."""

from __future__ import annotations

from datetime import datetime

from bramble.audit import store as audit
from bramble.core.deps import CoreDeps
from bramble.core.errors import Invalid, NotFound
from bramble.core.flavors import FlavorService
from bramble.core.floating_ips import FloatingIpService
from bramble.core.images import ImageService
from bramble.core.keypairs import KeypairService
from bramble.core.machines import MachineService, ProfileService
from bramble.core.networks import NetworkService
from bramble.core.nodes import NodeService
from bramble.core.pools import PoolService
from bramble.core.secgroups import SecurityGroupService
from bramble.core.tokens import TokenService
from bramble.core.vms import VmService
from bramble.core.volumes import VolumeService
from bramble.db.models import EventRow, OperationRow


class Cloud:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps
        self.images = ImageService(deps)
        self.flavors = FlavorService(deps)
        self.keypairs = KeypairService(deps)
        self.vms = VmService(deps)
        self.volumes = VolumeService(deps)
        self.pools = PoolService(deps)
        self.networks: NetworkService = self.vms.networks
        self.secgroups: SecurityGroupService = self.vms.secgroups
        self.floating_ips = FloatingIpService(deps, self.networks)
        self.nodes = NodeService(deps)
        self.machines = MachineService(deps)
        self.profiles = ProfileService(deps)
        self.tokens = TokenService(deps.db)

    async def recover(self) -> None:
        """After a restart: fail operations that were cut off, finish interrupted deletes."""
        await self.deps.runner.fail_interrupted()
        await self.vms.resume_interrupted_deletes()

    async def operation(self, op_id: str) -> OperationRow:
        async with self.deps.db.read() as session:
            row = await session.get(OperationRow, op_id)
        if row is None:
            raise NotFound(f"operation {op_id!r} not found")
        return row

    async def events(
        self,
        *,
        target: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        request_id: str | None = None,
        limit: int = 100,
    ) -> list[EventRow]:
        if limit < 1:
            raise Invalid("limit must be at least 1")
        async with self.deps.db.read() as session:
            return await audit.query(
                session, target=target, action=action, since=since, request_id=request_id, limit=limit
            )
