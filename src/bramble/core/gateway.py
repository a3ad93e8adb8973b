"""How operations reach a node: a narrow interface the agent implements.

In the all-in-one daemon the gateway is the local agent object itself; with several
nodes it is an HTTP client to that node's agent. Core never imports the agent.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from bramble.boot.records import InventoryProblem, Machine, Profile, WriteResult
from bramble.compute.driver import ConsoleData, DiskAttachment, VmRuntime, VmSpec
from bramble.storage.driver import StoredDisk, StoredImage
from bramble.storage.pools import PoolSpec


class NodeGateway(Protocol):
    async def prepare_disk(
        self, disk_id: str, image: StoredImage, size_bytes: int, pool: PoolSpec | None = None
    ) -> StoredDisk:
        """Clone ``image`` into a VM disk in ``pool`` (None: the node's default pool)."""

    async def delete_disk(self, disk_id: str, pool: PoolSpec | None = None) -> None: ...

    async def prepare_cached_disk(
        self, disk_id: str, image: StoredImage, size_bytes: int, pool: PoolSpec | None, precache_bytes: int
    ) -> StoredDisk:
        """A VM disk as a local overlay on this node's cache of ``image`` (an RBD pool's image)."""

    async def drop_cache(self, vm_id: str, image: StoredImage, pool: PoolSpec | None) -> StoredDisk:
        """Move the VM's cached disk into an RBD clone in ``pool`` (a running guest is pivoted live)."""

    async def cache_stats(self, spec: VmSpec) -> dict[str, Any] | None:
        """Cache size and hit ratio of a VM's cached disk (None: its disk is not cached here)."""

    async def start_vm(self, spec: VmSpec) -> VmRuntime: ...

    async def stop_vm(self, vm_id: str, *, force: bool, timeout: float | None = None) -> VmRuntime: ...

    async def reboot_vm(self, vm_id: str) -> VmRuntime: ...

    async def pause_vm(self, vm_id: str) -> VmRuntime: ...

    async def resume_vm(self, vm_id: str) -> VmRuntime: ...

    async def destroy_vm(self, vm_id: str) -> None:
        """Hard stop and clean up every runtime file, console log included."""

    async def read_console(self, vm_id: str, offset: int | None, tail: int) -> ConsoleData: ...

    async def attach_volume(self, vm_id: str, disk: DiskAttachment) -> None:
        """Hot-plug a volume's disk (``node_name`` set) into a running VM."""

    async def detach_volume(self, vm_id: str, node_name: str) -> None:
        """Hot-unplug; returns once the guest has let go of the disk."""

    async def grow_volume(self, vm_id: str, node_name: str, size_bytes: int) -> None:
        """Grow an attached disk through the hypervisor so the guest sees the new size."""

    async def refresh_security(self) -> None:
        """Re-apply this node's firewall from the control plane's current groups and members."""

    async def refresh_floating_ips(self) -> None:
        """Re-apply this node's floating IP mappings (DNAT/SNAT, uplink addresses) from the control plane."""


class NodeDirectory(Protocol):
    def gateway(self, node: str) -> NodeGateway:
        """The gateway to ``node``; raises LookupError for an unknown node."""


class InventoryStore(Protocol):
    """The bare-metal inventory as core sees it (``bramble.boot.inventory.Inventory`` is one).

    Reads are cheap and in memory; writes touch files and may run git, so core calls them
    in a worker thread.
    """

    default_profile: str

    def machines(self) -> list[Machine]: ...

    def machine(self, name: str) -> Machine | None: ...

    def machine_by_mac(self, mac: str) -> Machine | None: ...

    def profiles(self) -> list[Profile]: ...

    def profile(self, name: str) -> Profile | None: ...

    def profile_for(self, machine: Machine | None) -> Profile: ...

    def machines_using(self, profile: str) -> list[str]: ...

    def problems(self) -> list[InventoryProblem]: ...

    def relative(self, kind: Literal["machines", "profiles", "groups"], name: str) -> str: ...

    def put_machine(self, machine: Machine, *, actor: str, reason: str, request_id: str = "") -> WriteResult: ...

    def remove_machine(self, name: str, *, actor: str, reason: str, request_id: str = "") -> WriteResult: ...

    def put_profile(self, profile: Profile, *, actor: str, reason: str, request_id: str = "") -> WriteResult: ...

    def remove_profile(self, name: str, *, actor: str, reason: str, request_id: str = "") -> WriteResult: ...


class BootGateway(Protocol):
    """The boot role's actions that core triggers (the role object implements it)."""

    async def wake(self, mac: str, interface: str | None) -> str:
        """Send a Wake-on-LAN magic packet; returns the interface it went out on."""
