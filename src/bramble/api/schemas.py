"""Request and response bodies of the v1 API.

The CLI imports these too, so both sides agree on field names and limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
NAME_HELP = "1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str  # not_found | conflict | invalid | unauthorized | internal
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---------------------------------------------------------------- images
class ImageCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    arch: str = "x86_64"
    cmdline: str | None = Field(default=None, max_length=4096)
    source_url: str | None = Field(
        default=None, description="http(s) URL the server downloads; without it, upload the parts"
    )
    source_kernel_url: str | None = None
    source_initrd_url: str | None = None
    pool: str | None = Field(default=None, max_length=63, description="storage pool; default: the default pool")


class Image(BaseModel):
    id: str
    name: str
    arch: str
    status: str  # queued | importing | active | error
    format: str | None = None
    size_bytes: int | None = None
    virtual_size_bytes: int | None = None
    has_kernel: bool = False
    has_initrd: bool = False
    cmdline: str | None = None
    error: str | None = None
    pool: str | None = None  # storage pool
    created_at: datetime


# ---------------------------------------------------------------- flavors
class FlavorCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    cpus: int = Field(ge=1, le=256)
    memory_mib: int = Field(ge=1, le=4 * 1024 * 1024)
    disk_gib: int = Field(ge=1, le=65536)


class Flavor(BaseModel):
    id: str
    name: str
    cpus: int
    memory_mib: int
    disk_gib: int


# ---------------------------------------------------------------- VMs
class VmNicRequest(Strict):
    network: str = Field(min_length=1, max_length=63, description="network name or id")
    address: str | None = Field(default=None, max_length=15, description="fixed IPv4 address; default: the next free")


class VmNic(BaseModel):
    network: str
    mac: str
    address: str
    tap: str
    security_groups: list[str] = []
    floating_ip: str | None = None  # the public address mapped to this NIC (fip attach)


class VmVolume(BaseModel):
    """A volume attached to the VM (``device``: the hypervisor's id for the disk)."""

    name: str
    size_bytes: int
    device: str | None = None


class VmCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    image: str = Field(description="image name or id")
    flavor: str | None = Field(default=None, description="flavor name or id")
    cpus: int | None = Field(default=None, ge=1, le=256)
    memory_mib: int | None = Field(default=None, ge=1, le=4 * 1024 * 1024)
    disk_gib: int | None = Field(default=None, ge=1, le=65536)
    arch: str | None = Field(default=None, description="defaults to the image's architecture")
    start: bool = True
    nics: list[VmNicRequest] = Field(default=[], max_length=8, description="one NIC per entry, in guest order")
    security_groups: list[str] = Field(
        default=[], max_length=8, description="groups of every NIC (names or ids); default: the `default` group"
    )
    key: str | None = Field(default=None, max_length=63, description="keypair name or id (cloud-init SSH key)")
    user_data: str | None = Field(default=None, max_length=65536, description="cloud-init user-data, <= 64 KiB")
    pool: str | None = Field(
        default=None, max_length=63, description="storage pool of the VM's disk; default: the image's pool"
    )
    cache: bool | None = Field(
        default=None,
        description="disk as a local overlay on the node's cache of the RBD image (writes stay on the node); "
        "default: [storage] cache",
    )


class VmAction(Strict):
    force: bool = False


class VmCacheStats(BaseModel):
    """A cached VM's figures from its node (the image's part is shared by its VMs there)."""

    image_id: str
    cache_bytes: int  # overlay_bytes + image_cache_bytes
    overlay_bytes: int  # this VM's local writes
    image_cache_bytes: int  # the node's cache of the image
    ceph_read_bytes: int  # read from Ceph by the image's cache owner since it started
    served_bytes: int  # read by the image's running guests on the node, plus pre-cache reads
    hit_ratio: float | None = None  # 1 - ceph_read / served; None before anything was read


class Vm(BaseModel):
    id: str
    name: str
    arch: str
    cpus: int
    memory_mib: int
    disk_gib: int
    image_id: str | None
    image_name: str | None = None
    flavor_name: str | None = None
    node: str | None
    desired_state: str  # running | stopped | paused
    state: str  # creating | running | stopped | paused | error | deleting
    state_reason: str | None = None
    accel: str | None = None
    pid: int | None = None
    vnc: str | None = None  # host:port, bound to localhost
    created_at: datetime
    updated_at: datetime
    nics: list[VmNic] = []
    key_name: str | None = None
    has_user_data: bool = False
    pool: str | None = None  # storage pool of the VM's disk
    volumes: list[VmVolume] = []
    cache: str = "off"  # on: the disk is a local overlay on the node's cache tier
    cache_stats: VmCacheStats | None = None  # `vm show` only, when the node answers


class ConsoleChunk(BaseModel):
    data: str
    offset: int  # pass as ?offset= to read on from here
    size: int  # total size of the console log


# ---------------------------------------------------------------- operations, events, nodes
class Operation(BaseModel):
    id: str
    action: str
    target: str
    status: Literal["pending", "running", "succeeded", "failed"]
    progress: float = 0.0  # 0..100
    message: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    actor: str
    request_id: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class Accepted(BaseModel):
    """Returned with 202: poll GET /v1/operations/{operation.id} until it ends."""

    operation: Operation
    vm: Vm | None = None
    image: Image | None = None


class Event(BaseModel):
    id: int
    time: datetime
    actor: str
    action: str
    target: str
    request_id: str | None = None
    operation_id: str | None = None
    outcome: str = "ok"
    message: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class Node(BaseModel):
    name: str
    arch: str
    cpus: int
    memory_mib: int
    accel: str
    accel_reason: str | None = None
    roles: list[str]
    state: str  # up | down
    last_heartbeat: datetime | None = None
    vms: int = 0


class HealthInfo(BaseModel):
    status: str
    version: str


# ---------------------------------------------------------------- bare-metal machines and boot profiles
MAC_HELP = "MAC address, e.g. 52:54:00:12:34:56 (dashes, dots and bare hex are accepted)"


class InventoryProblem(BaseModel):
    """A file in the inventory that is skipped because it is wrong: fix it there."""

    path: str
    line: int | None = None
    message: str


class MachineCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    mac: str = Field(min_length=1, max_length=32, description=MAC_HELP)
    ip: str | None = Field(default=None, max_length=15, description="fixed IPv4 address handed out by DHCP")
    hostname: str | None = Field(default=None, max_length=253)
    arch: str = Field(default="x86_64", max_length=32)
    profile: str | None = Field(default=None, max_length=63, description="boot profile; default: the default one")
    notes: str = Field(default="", max_length=4096)
    groups: list[str] = Field(default=[], max_length=64)
    wake_at: list[str] = Field(default=[], max_length=64, description="power-on times: [DAYS] HH:MM, local time")
    interface: str | None = Field(default=None, max_length=15, description="interface for Wake-on-LAN")
    reason: str | None = Field(default=None, max_length=500, description="why (goes into the git commit)")


class MachineUpdate(Strict):
    """Only the fields sent are changed; send null to clear ip, hostname, profile or interface."""

    mac: str | None = Field(default=None, min_length=1, max_length=32, description=MAC_HELP)
    ip: str | None = Field(default=None, max_length=15)
    hostname: str | None = Field(default=None, max_length=253)
    arch: str | None = Field(default=None, max_length=32)
    profile: str | None = Field(default=None, max_length=63)
    notes: str | None = Field(default=None, max_length=4096)
    groups: list[str] | None = Field(default=None, max_length=64)
    wake_at: list[str] | None = Field(default=None, max_length=64)
    interface: str | None = Field(default=None, max_length=15)
    reason: str | None = Field(default=None, max_length=500)


class Machine(BaseModel):
    name: str
    mac: str
    ip: str | None = None
    hostname: str | None = None
    arch: str
    profile: str | None = None  # as set in the file; None: the default profile
    boot_profile: str  # what it boots now
    notes: str = ""
    groups: list[str] = []
    wake_at: list[str] = []
    interface: str | None = None
    discovered: bool = False
    path: str  # the file, relative to the inventory directory
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Set on replies to a change: the git commit made, or why none could be made.
    commit: str | None = None
    git_error: str | None = None


class MachineList(BaseModel):
    items: list[Machine]
    problems: list[InventoryProblem] = []


class WakeResult(BaseModel):
    machine: str
    mac: str
    interface: str


class ProfileCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    kind: Literal["kernel", "ipxe", "local"]
    kernel: str | None = Field(default=None, max_length=1024, description="path under the boot files dir, or URL")
    initrd: list[str] = Field(default=[], max_length=16)
    cmdline: str = Field(default="", max_length=4096)
    transport: Literal["http", "tftp"] = "http"
    template: str | None = Field(default=None, max_length=64 * 1024, description="iPXE script (Jinja2)")
    description: str = Field(default="", max_length=500)
    reason: str | None = Field(default=None, max_length=500, description="why (goes into the git commit)")


class Profile(BaseModel):
    name: str
    kind: str  # kernel | ipxe | local
    kernel: str | None = None
    initrd: list[str] = []
    cmdline: str = ""
    transport: str = "http"
    template: str | None = None
    description: str = ""
    builtin: bool = False
    default: bool = False  # machines without a profile boot this one
    used_by: list[str] = []
    path: str | None = None  # None for a built-in without a file
    commit: str | None = None
    git_error: str | None = None


class ProfileList(BaseModel):
    items: list[Profile]
    problems: list[InventoryProblem] = []


class Removed(BaseModel):
    """Reply to deleting a machine or profile: which file went, and its git commit."""

    target: str  # machine/NAME | profile/NAME
    path: str
    commit: str | None = None
    git_error: str | None = None


# ---------------------------------------------------------------- networks
class NetworkCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    cidr: str = Field(max_length=18, description="IPv4 subnet, like 10.20.0.0/24")
    gateway: str | None = Field(default=None, max_length=15, description="default: the first host address")
    dns: list[str] = Field(default=[], max_length=8, description="DNS servers handed out by DHCP")
    nat: bool = Field(default=False, description="masquerade the subnet to anything outside it")
    uplink: str | None = Field(default=None, max_length=15, description="host interface for NAT or the VLAN")
    vlan: int | None = Field(default=None, ge=1, le=4094, description="802.1q id on the uplink")


class NetworkPort(BaseModel):
    vm: str
    address: str
    mac: str


class Network(BaseModel):
    id: str
    name: str
    cidr: str
    gateway: str
    dns: list[str] = []
    nat: bool = False
    uplink: str | None = None
    vlan: int | None = None
    bridge: str
    nics: int = 0
    ports: list[NetworkPort] = []
    created_at: datetime


# ---------------------------------------------------------------- security groups
class SecurityGroupCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    description: str = Field(default="", max_length=255)


class SecurityRuleCreate(Strict):
    direction: Literal["ingress", "egress"]
    protocol: Literal["any", "tcp", "udp", "icmp"] = "any"
    port_min: int | None = Field(default=None, ge=1, le=65535)
    port_max: int | None = Field(default=None, ge=1, le=65535)
    cidr: str | None = Field(default=None, max_length=18, description="remote IPv4 network")
    remote_group: str | None = Field(default=None, max_length=63, description="remote group name or id")


class SecurityRule(BaseModel):
    id: str
    direction: str
    protocol: str
    port_min: int | None = None
    port_max: int | None = None
    cidr: str | None = None
    remote_group: str | None = None


class SecurityGroup(BaseModel):
    id: str
    name: str
    description: str = ""
    rules: list[SecurityRule] = []
    vms: list[str] = []
    created_at: datetime


# ---------------------------------------------------------------- keypairs
class KeypairCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    public_key: str | None = Field(
        default=None, max_length=16384, description="OpenSSH public key line to import; omitted: generate ed25519"
    )


class Keypair(BaseModel):
    id: str
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime
    private_key: str | None = Field(default=None, description="only in the answer that generated the pair")


# ---------------------------------------------------------------- floating IPs
class FloatingIpCreate(Strict):
    network: str = Field(min_length=1, max_length=63, description="network (name or id) the address comes from")
    address: str | None = Field(default=None, max_length=15, description="fixed IPv4 address; default: the next free")


class FloatingIpAttach(Strict):
    vm: str = Field(min_length=1, max_length=63, description="VM name or id")
    nic: int | None = Field(
        default=None, ge=0, le=7, description="NIC position on the VM; default: its first NIC on another network"
    )


class FloatingIp(BaseModel):
    id: str
    address: str
    network: str
    vm: str | None = None  # while attached
    nic: int | None = None
    private_address: str | None = None
    node: str | None = None
    created_at: datetime
