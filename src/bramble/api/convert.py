"""Rows to response models: the one place that decides what the API shows."""

from __future__ import annotations

from bramble.api import schemas
from bramble.db.models import (
    EventRow,
    FlavorRow,
    ImageRow,
    NetworkRow,
    NicRow,
    NodeRow,
    OperationRow,
    SecurityGroupRow,
    VmRow,
    VolumeRow,
)
from bramble.network.driver import bridge_name, tap_name

VNC_BASE_PORT = 5900


def image(row: ImageRow) -> schemas.Image:
    return schemas.Image(
        id=row.id,
        name=row.name,
        arch=row.arch,
        status=row.status,
        format=row.format,
        size_bytes=row.size_bytes,
        virtual_size_bytes=row.virtual_size_bytes,
        has_kernel=row.kernel_path is not None,
        has_initrd=row.initrd_path is not None,
        cmdline=row.cmdline,
        error=row.error,
        pool=row.pool,
        created_at=row.created_at,
    )


def flavor(row: FlavorRow) -> schemas.Flavor:
    return schemas.Flavor(id=row.id, name=row.name, cpus=row.cpus, memory_mib=row.memory_mib, disk_gib=row.disk_gib)


def vm(
    row: VmRow,
    image_row: ImageRow | None = None,
    flavor_row: FlavorRow | None = None,
    nics: list[tuple[NicRow, NetworkRow]] | None = None,
    groups: dict[str, list[tuple[str, str]]] | None = None,
    floating: dict[str, str] | None = None,
    volumes: list[VolumeRow] | None = None,
) -> schemas.Vm:
    vnc = None
    if row.vnc_display is not None and row.state in ("running", "paused"):
        vnc = f"127.0.0.1:{VNC_BASE_PORT + row.vnc_display}"
    return schemas.Vm(
        id=row.id,
        name=row.name,
        arch=row.arch,
        cpus=row.cpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        image_id=row.image_id,
        image_name=image_row.name if image_row else None,
        flavor_name=flavor_row.name if flavor_row else None,
        node=row.node,
        desired_state=row.desired_state,
        state=row.state,
        state_reason=row.state_reason,
        accel=row.accel,
        pid=row.pid,
        vnc=vnc,
        created_at=row.created_at,
        updated_at=row.updated_at,
        key_name=row.key_name,
        has_user_data=row.user_data is not None,
        pool=row.pool,
        cache=row.cache,
        nics=[
            schemas.VmNic(
                network=network.name,
                mac=nic.mac,
                address=nic.address,
                tap=tap_name(nic.id),
                security_groups=[name for _, name in (groups or {}).get(nic.id, [])],
                floating_ip=(floating or {}).get(nic.id),
            )
            for nic, network in nics or []
        ],
        volumes=[schemas.VmVolume(name=v.name, size_bytes=v.size_bytes, device=v.device) for v in volumes or []],
    )


def network(row: NetworkRow, nics: int = 0, ports: list[tuple[NicRow, str]] | None = None) -> schemas.Network:
    return schemas.Network(
        id=row.id,
        name=row.name,
        cidr=row.cidr,
        gateway=row.gateway,
        dns=[a for a in row.dns.split(",") if a],
        nat=row.nat,
        uplink=row.uplink,
        vlan=row.vlan,
        bridge=bridge_name(row.id),
        nics=nics if ports is None else len(ports),
        ports=[schemas.NetworkPort(vm=vm_name, address=nic.address, mac=nic.mac) for nic, vm_name in ports or []],
        created_at=row.created_at,
    )


def operation(row: OperationRow) -> schemas.Operation:
    return schemas.Operation(
        id=row.id,
        action=row.action,
        target=row.target,
        status=row.status,  # type: ignore[arg-type]
        progress=row.progress,
        message=row.message,
        error=row.error,
        result=row.result,
        actor=row.actor,
        request_id=row.request_id,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def event(row: EventRow) -> schemas.Event:
    return schemas.Event(
        id=row.id,
        time=row.time,
        actor=row.actor,
        action=row.action,
        target=row.target,
        request_id=row.request_id,
        operation_id=row.operation_id,
        outcome=row.outcome,
        message=row.message,
        before=row.before,
        after=row.after,
    )


def node(row: NodeRow, vms: int, up: bool) -> schemas.Node:
    return schemas.Node(
        name=row.name,
        arch=row.arch,
        cpus=row.cpus,
        memory_mib=row.memory_mib,
        accel=row.accel,
        accel_reason=row.accel_reason,
        roles=[r for r in row.roles.split(",") if r],
        state="up" if up else "down",
        last_heartbeat=row.last_heartbeat,
        vms=vms,
    )


def security_group(
    row: SecurityGroupRow, rules: list[dict[str, object]] | None = None, vms: list[str] | None = None
) -> schemas.SecurityGroup:
    return schemas.SecurityGroup(
        id=row.id,
        name=row.name,
        description=row.description,
        rules=[schemas.SecurityRule.model_validate(r) for r in rules or []],
        vms=vms or [],
        created_at=row.created_at,
    )
