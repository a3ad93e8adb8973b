"""How operations reach a node: a narrow interface the agent implements.

In the all-in-one daemon the gateway is the local agent object itself; with several
nodes it is an HTTP client to that node's agent. Core never imports the agent.
"""

from __future__ import annotations

from typing import Protocol

from bramble.compute.driver import ConsoleData, VmRuntime, VmSpec
from bramble.storage.driver import StoredDisk, StoredImage


class NodeGateway(Protocol):
    async def prepare_disk(self, disk_id: str, image: StoredImage, size_bytes: int) -> StoredDisk: ...

    async def delete_disk(self, disk_id: str) -> None: ...

    async def start_vm(self, spec: VmSpec) -> VmRuntime: ...

    async def stop_vm(self, vm_id: str, *, force: bool, timeout: float | None = None) -> VmRuntime: ...

    async def reboot_vm(self, vm_id: str) -> VmRuntime: ...

    async def pause_vm(self, vm_id: str) -> VmRuntime: ...

    async def resume_vm(self, vm_id: str) -> VmRuntime: ...

    async def destroy_vm(self, vm_id: str) -> None:
        """Hard stop and clean up every runtime file, console log included."""

    async def read_console(self, vm_id: str, offset: int | None, tail: int) -> ConsoleData: ...


class NodeDirectory(Protocol):
    def gateway(self, node: str) -> NodeGateway:
        """The gateway to ``node``; raises LookupError for an unknown node."""
