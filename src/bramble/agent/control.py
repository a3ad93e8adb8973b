"""What the agent needs from the control plane. In the all-in-one daemon the core's
node service is passed in directly; with several nodes this is an HTTP client."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Protocol

from bramble.compute.driver import DesiredVm, HostFacts, VmRuntime
from bramble.network.driver import FloatingIp
from bramble.network.secgroups import SecurityGroup


class ControlPlane(Protocol):
    async def register_node(self, facts: HostFacts) -> None: ...

    async def heartbeat(self, node: str) -> None: ...

    async def desired_vms(self, node: str) -> list[DesiredVm]: ...

    async def desired_vm(self, node: str, vm_id: str) -> DesiredVm | None: ...

    async def known_vm_ids(self, node: str) -> set[str]: ...

    async def known_image_ids(self) -> set[str]: ...

    async def report_vm_state(self, node: str, runtime: VmRuntime, *, actor: str | None = None) -> None: ...

    async def record_event(self, node: str, action: str, target: str, message: str, outcome: str = "ok") -> None: ...

    async def security_state(self, node: str) -> tuple[dict[str, SecurityGroup], dict[str, set[IPv4Address]]]:
        """Every security group with its rules, and each group's member addresses cloud-wide."""

    async def floating_ips(self, node: str) -> list[FloatingIp]:
        """Every floating IP mapped to a NIC of a VM placed on ``node`` (the node's whole set)."""
