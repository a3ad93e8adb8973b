"""The compute driver interface: what the agent needs from a hypervisor backend.

Drivers receive plain dataclasses and return plain dataclasses; they never see the
database or the API, so they can be unit-tested and swapped (qemu, fake).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bramble.storage.pools import PoolSpec


class PowerState(enum.StrEnum):
    """What the hypervisor reports about a VM, independent of what the user wants."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # no process (never started, shut down, or crashed)
    CRASHED = "crashed"  # the process died without a clean guest shutdown


@dataclass(frozen=True)
class DiskAttachment:
    """A disk as the hypervisor sees it: a path on this node and its format."""

    path: str
    format: str = "qcow2"  # qcow2 | raw
    media: str = "disk"  # disk | cdrom
    readonly: bool = False
    # The hypervisor's name for the disk (volumes: stable, so a live detach can find it);
    # None: named by position.
    node_name: str | None = None
    # RBD disks: a local qcow2 (made empty by the caller) that serves reads once they are cached;
    # writes go to it and to Ceph, and complete only when both did (write-through).
    cache_path: str | None = None


@dataclass(frozen=True)
class NicAttachment:
    """One NIC as a node needs it: the tap QEMU opens, the guest's MAC and address, and the
    network the tap's bridge serves (so the agent can build the bridge and its DHCP server
    from the spec alone, without asking the control plane again)."""

    nic_id: str
    network_id: str
    tap: str
    bridge: str
    mac: str
    address: str
    cidr: str
    gateway: str
    dns: tuple[str, ...] = ()
    nat: bool = False
    uplink: str | None = None
    vlan: int | None = None
    security_groups: tuple[str, ...] = ()  # group ids; none: an allow-all policy (NICs older than groups)


@dataclass(frozen=True)
class CloudInit:
    """What a guest learns about itself through its NoCloud seed and the metadata service."""

    instance_id: str
    hostname: str
    public_keys: tuple[str, ...] = ()  # OpenSSH public key lines
    user_data: str | None = None


@dataclass(frozen=True)
class VmSpec:
    """Everything a driver needs to start one VM. Derived from the desired state."""

    vm_id: str
    name: str
    arch: str
    cpus: int
    memory_mib: int
    disks: tuple[DiskAttachment, ...] = ()
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    vnc_display: int | None = None  # VNC port is 5900 + display, bound to localhost
    accel: str = "tcg"  # kvm | tcg
    nics: tuple[NicAttachment, ...] = ()  # in guest order: eth0, eth1, ...
    cloud_init: CloudInit | None = None  # the agent attaches a `cidata` seed CD-ROM built from it


@dataclass
class VmRuntime:
    """What the driver observed about one VM."""

    vm_id: str
    state: PowerState
    pid: int | None = None
    reason: str = ""  # why the state changed (guest shutdown, process exit code, ...)
    extra: dict[str, str] = field(default_factory=dict)


class ComputeError(Exception):
    """A hypervisor action failed; the message says why in words a user can act on."""


StateCallback = Callable[[VmRuntime], Awaitable[None]]


class ComputeDriver(ABC):
    """One backend that runs VMs on this node.

    Every method is idempotent where it can be: starting a running VM or stopping a
    stopped one is not an error, so the reconcile loop can call them freely.
    """

    name: str = "abstract"

    @abstractmethod
    async def start(self, spec: VmSpec) -> VmRuntime:
        """Start the VM; return once the hypervisor has it running or raise ComputeError."""

    @abstractmethod
    async def stop(self, vm_id: str, *, force: bool = False, timeout: float = 30.0) -> VmRuntime:
        """ACPI powerdown, then a hard stop after ``timeout`` seconds (at once if ``force``)."""

    @abstractmethod
    async def reboot(self, vm_id: str) -> VmRuntime:
        """Reset the guest (a hard reset: the guest cannot veto it)."""

    @abstractmethod
    async def pause(self, vm_id: str) -> VmRuntime: ...

    @abstractmethod
    async def resume(self, vm_id: str) -> VmRuntime: ...

    @abstractmethod
    async def status(self, vm_id: str) -> VmRuntime: ...

    @abstractmethod
    async def adopt(self) -> list[VmRuntime]:
        """Find VMs this driver started in an earlier life (after a daemon restart) and re-attach."""

    @abstractmethod
    async def cleanup(self, vm_id: str) -> None:
        """Remove runtime leftovers (sockets, pid files) of a stopped VM. Keeps the console log."""

    @abstractmethod
    def console_path(self, vm_id: str) -> str:
        """Where the serial console of this VM is logged."""

    def set_state_callback(self, callback: StateCallback | None) -> None:
        """Register a coroutine called whenever a VM changes state on its own (events, exit)."""
        self._state_callback = callback

    async def _notify(self, runtime: VmRuntime) -> None:
        callback = getattr(self, "_state_callback", None)
        if callback is not None:
            await callback(runtime)

    async def close(self) -> None:
        """Release connections (QMP sockets); leaves VMs running."""

    async def attach_disk(self, vm_id: str, disk: DiskAttachment) -> None:
        """Hot-plug ``disk`` (its ``node_name`` set) into a running VM as the next virtio disk."""
        raise ComputeError(f"the {self.name} compute driver cannot hot-plug disks")

    async def detach_disk(self, vm_id: str, node_name: str, *, timeout: float = 30.0) -> None:
        """Unplug a disk; waits (up to ``timeout``) for the guest to let go of it."""
        raise ComputeError(f"the {self.name} compute driver cannot hot-unplug disks")

    async def grow_disk(self, vm_id: str, node_name: str, size_bytes: int) -> None:
        """Grow an attached disk through the hypervisor, so the guest sees the new size at once."""
        raise ComputeError(f"the {self.name} compute driver cannot resize attached disks")

    async def replace_disk(self, vm_id: str, node_name: str, disk: DiskAttachment, *, timeout: float = 600.0) -> None:
        """Move a running VM's disk ``node_name`` onto ``disk`` (its ``node_name`` set) without stopping
        the guest: the data the old disk holds over its backing is copied, then the guest is switched.

        ``disk`` must already hold the old disk's backing data (e.g. an RBD clone of the image a
        cache overlay reads): only what the old top layer holds is copied.
        """
        raise ComputeError(f"the {self.name} compute driver cannot move disks of running VMs")

    async def disk_read_bytes(self, vm_id: str) -> dict[str, int]:
        """Bytes the guest has read from each disk since its hypervisor started, by device id."""
        return {}


@dataclass(frozen=True)
class DesiredVm:
    """What the control plane wants of one VM on this node; the agent makes it so."""

    spec: VmSpec
    desired_state: str  # running | stopped | paused
    disk_id: str | None = None
    disk_pool: PoolSpec | None = None  # the storage pool holding the disk; None: the node's default


@dataclass(frozen=True)
class HostFacts:
    """What a node tells the control plane about itself when it registers."""

    name: str
    arch: str
    cpus: int
    memory_mib: int
    accel: str
    accel_reason: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class ConsoleData:
    """A slice of a VM's serial console log; ``offset`` is where the next read continues."""

    data: bytes
    offset: int
    size: int
