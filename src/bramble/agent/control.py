"""What the agent needs from the control plane. In the all-in-one daemon the core's
node service is passed in directly; with several nodes this is an HTTP client."""

from __future__ import annotations

from typing import Protocol

from bramble.compute.driver import DesiredVm, HostFacts, VmRuntime


class ControlPlane(Protocol):
    async def register_node(self, facts: HostFacts) -> None: ...

    async def heartbeat(self, node: str) -> None: ...

    async def desired_vms(self, node: str) -> list[DesiredVm]: ...

    async def desired_vm(self, node: str, vm_id: str) -> DesiredVm | None: ...

    async def known_vm_ids(self, node: str) -> set[str]: ...

    async def report_vm_state(self, node: str, runtime: VmRuntime, *, actor: str | None = None) -> None: ...

    async def record_event(self, node: str, action: str, target: str, message: str, outcome: str = "ok") -> None: ...
