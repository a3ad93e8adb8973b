"""Tables. Desired state (what users asked for) and observed state live side by side."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored as real datetimes and read back timezone-aware.

    SQLite has no datetime type; comparing ISO strings with different offsets is the
    kind of bug that once made a cloud reuse leased addresses too early. Everything is
    normalised to UTC on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class ImageRow(Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    arch: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # queued | importing | active | error
    format: Mapped[str | None] = mapped_column(String(8))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    virtual_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    path: Mapped[str | None] = mapped_column(Text)
    kernel_path: Mapped[str | None] = mapped_column(Text)
    initrd_path: Mapped[str | None] = mapped_column(Text)
    cmdline: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    pool: Mapped[str | None] = mapped_column(String(63))  # storage pool name; None: the default pool
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoragePoolRow(Base):
    """Where images, VM disks and volumes are stored; ``default`` mirrors the ``[storage]`` config."""

    __tablename__ = "storage_pools"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    driver: Mapped[str] = mapped_column(String(16))  # local | rbd | fake
    path: Mapped[str | None] = mapped_column(Text)  # local: directory; None: the node's default
    ceph_conf: Mapped[str | None] = mapped_column(Text)
    ceph_pool: Mapped[str | None] = mapped_column(String(128))
    ceph_user: Mapped[str | None] = mapped_column(String(64))
    ceph_keyring: Mapped[str | None] = mapped_column(Text)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=15)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    cache: Mapped[str] = mapped_column(String(8), default="off", server_default="off")  # rbd: VMs' default
    precache_gib: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FlavorRow(Base):
    __tablename__ = "flavors"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class VmRow(Base):
    __tablename__ = "vms"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    arch: Mapped[str] = mapped_column(String(16))
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str | None] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    flavor_id: Mapped[str | None] = mapped_column(ForeignKey("flavors.id", ondelete="SET NULL"))
    node: Mapped[str | None] = mapped_column(String(255), index=True)
    desired_state: Mapped[str] = mapped_column(String(16))  # running | stopped | paused
    state: Mapped[str] = mapped_column(String(16))  # creating|running|stopped|paused|error|deleting
    state_reason: Mapped[str | None] = mapped_column(Text)
    accel: Mapped[str | None] = mapped_column(String(8))
    pid: Mapped[int | None] = mapped_column(Integer)
    vnc_display: Mapped[int | None] = mapped_column(Integer, unique=True)
    disk_path: Mapped[str | None] = mapped_column(Text)
    pool: Mapped[str | None] = mapped_column(String(63))  # the disk's storage pool; None: the default pool
    # "on": disk_path is a local overlay on this node's cache of the RBD image (storage/cache.py)
    cache: Mapped[str] = mapped_column(String(8), default="off", server_default="off")
    # cloud-init: the key is copied at create time (deleting the keypair leaves the VM's key alone)
    key_name: Mapped[str | None] = mapped_column(String(63))
    ssh_public_key: Mapped[str | None] = mapped_column(Text)
    user_data: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class NodeRow(Base):
    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    arch: Mapped[str] = mapped_column(String(16))
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    accel: Mapped[str] = mapped_column(String(8))
    accel_reason: Mapped[str | None] = mapped_column(Text)
    roles: Mapped[str] = mapped_column(String(64))  # comma separated
    last_heartbeat: Mapped[datetime | None] = mapped_column()


class OperationRow(Base):
    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | running | succeeded | failed
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class EventRow(Base):
    """The audit log: one row per action, state change or observation."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))  # kind/name, e.g. vm/web1
    request_id: Mapped[str | None] = mapped_column(String(64))
    operation_id: Mapped[str | None] = mapped_column(String(36))
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok | failed
    message: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_events_target_time", "target", "time"),
        Index("ix_events_time", "time"),
        Index("ix_events_action_time", "action", "time"),
    )


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NetworkRow(Base):
    """A VM network: one IPv4 subnet, a bridge on every node that has VMs on it."""

    __tablename__ = "networks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    cidr: Mapped[str] = mapped_column(String(18))
    gateway: Mapped[str] = mapped_column(String(15))
    dns: Mapped[str] = mapped_column(String(255), default="")  # comma separated addresses
    nat: Mapped[bool] = mapped_column(Boolean, default=False)
    uplink: Mapped[str | None] = mapped_column(String(15))
    vlan: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NicRow(Base):
    """A VM's NIC on one network. The unique keys are what make concurrent allocation safe."""

    __tablename__ = "nics"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="RESTRICT"))
    position: Mapped[int] = mapped_column(Integer)  # order on the VM: eth0, eth1, ...
    address: Mapped[str] = mapped_column(String(15))
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("network_id", "address", name="uq_nics_network_address"),)


class IpReleaseRow(Base):
    """When an address last left a NIC: IPAM keeps it out of use for the quarantine after that."""

    __tablename__ = "ip_releases"
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), primary_key=True)
    address: Mapped[str] = mapped_column(String(15), primary_key=True)
    freed_at: Mapped[datetime] = mapped_column()


class SecurityGroupRow(Base):
    """A named allow-list of rules; a NIC's firewall is the union of its groups' rules."""

    __tablename__ = "security_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SecurityGroupRuleRow(Base):
    __tablename__ = "security_group_rules"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # ingress | egress
    protocol: Mapped[str] = mapped_column(String(8))  # any | tcp | udp | icmp
    port_min: Mapped[int | None] = mapped_column(Integer)
    port_max: Mapped[int | None] = mapped_column(Integer)
    cidr: Mapped[str | None] = mapped_column(String(18))
    remote_group_id: Mapped[str | None] = mapped_column(ForeignKey("security_groups.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NicSecurityGroupRow(Base):
    __tablename__ = "nic_security_groups"
    nic_id: Mapped[str] = mapped_column(ForeignKey("nics.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id", ondelete="RESTRICT"), primary_key=True)


class KeypairRow(Base):
    """An SSH public key by name; the private key of a generated pair is never stored."""

    __tablename__ = "keypairs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class VolumeRow(Base):
    """A disk that outlives VMs: attached to at most one VM at a time, as an extra virtio disk."""

    __tablename__ = "volumes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    driver: Mapped[str] = mapped_column(String(16))  # the storage backend: local | rbd | fake
    pool: Mapped[str | None] = mapped_column(String(128))
    path: Mapped[str | None] = mapped_column(Text)  # the file or rbd: reference QEMU opens
    format: Mapped[str] = mapped_column(String(8), default="qcow2")
    state: Mapped[str] = mapped_column(String(16))  # creating | available | attached | error
    vm_id: Mapped[str | None] = mapped_column(ForeignKey("vms.id", ondelete="SET NULL"), index=True)
    device: Mapped[str | None] = mapped_column(String(32))  # the QEMU device id while attached
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class FloatingIpRow(Base):
    """A public address taken from a network by the same IPAM as NICs; while attached, mapped 1:1 to a NIC.

    It stays allocated when its VM goes (``nic_id`` becomes NULL), as a Neutron floating IP does; only a
    delete gives the address back (into quarantine).
    """

    __tablename__ = "floating_ips"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="RESTRICT"), index=True)
    address: Mapped[str] = mapped_column(String(15))
    # one floating IP per NIC: the SNAT of the NIC's own traffic must have one answer
    nic_id: Mapped[str | None] = mapped_column(ForeignKey("nics.id", ondelete="SET NULL"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("network_id", "address", name="uq_floating_ips_network_address"),)
