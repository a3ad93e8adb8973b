"""Virtual machines: create, inspect, drive through their lifecycle, read the serial console."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bramble.api.schemas import ConsoleChunk, Vm, VmAction, VmCreate
from bramble.cli import operation
from bramble.cli.client import (
    Client,
    CliError,
    body,
    client_from,
    complete_flavors,
    complete_images,
    complete_vms,
    parse,
    parse_list,
    seg,
)
from bramble.cli.output import (
    GIB,
    MIB,
    JsonOut,
    deleted,
    emit,
    format_size,
    human_bytes,
    panel,
    parse_disk,
    parse_memory,
    state,
    stderr,
    table,
)

app = typer.Typer(help="Create and operate virtual machines.", no_args_is_help=True)

VmName = Annotated[
    str, typer.Argument(metavar="NAME", help="VM name or id.", autocompletion=complete_vms, show_default=False)
]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Return once the API accepts the request; print the operation.")
]


def _path(name: str) -> str:
    return f"/v1/vms/{seg(name)}"


def render(vm: Vm) -> None:
    panel(
        f"vm {vm.name}",
        [
            ("id", vm.id),
            ("state", state(vm.state, vm.state_reason)),
            ("desired", vm.desired_state),
            ("node", vm.node),
            ("accel", vm.accel),
            ("pid", vm.pid),
            ("vnc", vm.vnc),
            ("arch", vm.arch),
            ("cpus", vm.cpus),
            ("memory", format_size(vm.memory_mib * MIB)),
            ("disk", format_size(vm.disk_gib * GIB)),
            ("image", vm.image_name or vm.image_id),
            ("pool", vm.pool),
            ("cache", _cache_line(vm)),
            ("flavor", vm.flavor_name),
            *(
                (
                    f"nic{i}",
                    f"{n.network} {n.address} {n.mac} ({n.tap}) groups {', '.join(n.security_groups) or '-'}"
                    + (f" floating {n.floating_ip}" if n.floating_ip else ""),
                )
                for i, n in enumerate(vm.nics)
            ),
            *((f"volume {v.name}", f"{format_size(v.size_bytes)} ({v.device or '-'})") for v in vm.volumes),
            ("key", vm.key_name),
            ("user-data", "yes" if vm.has_user_data else None),
            ("created", vm.created_at),
            ("updated", vm.updated_at),
        ],
    )


def _cache_line(vm: Vm) -> str | None:
    """``on: 52 MiB (overlay 196 KiB), hit ratio 0.93, 48 MiB from Ceph`` for a cached disk."""
    if vm.cache != "on":
        return None
    figures = vm.cache_stats
    if figures is None:
        return "on (no figures: the node did not answer)"
    ratio = "-" if figures.hit_ratio is None else f"{figures.hit_ratio:.2f}"
    return (
        f"on: {format_size(figures.cache_bytes)} (overlay {format_size(figures.overlay_bytes)}), "
        f"hit ratio {ratio}, {format_size(figures.ceph_read_bytes)} from Ceph"
    )


def _after(client: Client, data: Any, vm_ref: str, *, no_wait: bool, json_out: bool, brief: bool) -> None:
    """Follow a 202, then show the VM as it now is (briefly for lifecycle actions)."""
    if operation.accepted(client, data, no_wait=no_wait, json_out=json_out) is None:
        return
    data = client.get(_path(vm_ref))
    vm = parse(Vm, data)
    if brief:
        reason = f" ({vm.state_reason})" if vm.state_reason else ""
        emit(data, json_out, lambda: typer.echo(f"vm {vm.name}: {vm.state}{reason}"))
    else:
        emit(data, json_out, lambda: render(vm))


def _read_user_data(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise CliError(f"{path}: {len(data)} bytes; user-data may be at most 65536")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte {exc.start})") from None


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new VM.", show_default=False)],
    image: Annotated[str, typer.Option("--image", "-i", help="Image name or id.", autocompletion=complete_images)],
    flavor: Annotated[
        str | None, typer.Option("--flavor", "-f", help="Flavor name or id.", autocompletion=complete_flavors)
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="Virtual CPUs (overrides the flavor).", min=1)] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", "-m", help="Memory: MiB, or with a unit (2G).", metavar="SIZE")
    ] = None,
    disk_size: Annotated[
        str | None, typer.Option("--disk-size", help="Disk: GiB, or with a unit (20G).", metavar="SIZE")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="Guest architecture (default: the image's).")] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Create it stopped.")] = False,
    net: Annotated[
        list[str] | None,
        typer.Option(
            "--net", help="A NIC on network NAME, optionally with a fixed IP; repeat for more.", metavar="NAME[:IP]"
        ),
    ] = None,
    security_group: Annotated[
        list[str] | None,
        typer.Option("--security-group", "-g", help="Security group of its NICs (repeatable; default: default)."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Keypair whose public key the guest gets.")] = None,
    user_data: Annotated[
        Path | None, typer.Option("--user-data", help="cloud-init user-data file (at most 64 KiB).", metavar="FILE")
    ] = None,
    pool: Annotated[
        str | None, typer.Option("--pool", help="Storage pool of its disk (default: the image's pool).")
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache",
            help="Disk as a local overlay on the node's cache of the RBD image; writes stay on the node "
            "(default: the [storage] cache setting).",
            show_default=False,
        ),
    ] = None,
    no_wait: NoWait = False,
    json_out: JsonOut = False,
) -> None:
    """Create a VM from an image, sized by a flavor and/or explicit values."""
    if flavor is None and None in (cpus, memory, disk_size):
        raise CliError("give --flavor, or all of --cpus, --memory and --disk-size")
    request = body(
        VmCreate,
        name=name,
        image=image,
        flavor=flavor,
        cpus=cpus,
        memory_mib=parse_memory(memory) if memory is not None else None,
        disk_gib=parse_disk(disk_size) if disk_size is not None else None,
        arch=arch,
        start=not no_start,
        nics=[_nic(text) for text in net or []] or None,
        security_groups=security_group or None,
        key=key,
        user_data=_read_user_data(user_data) if user_data is not None else None,
        pool=pool,
        cache=cache,
    )
    client = client_from(ctx)
    _after(client, client.post("/v1/vms", request), name, no_wait=no_wait, json_out=json_out, brief=False)


def _nic(text: str) -> dict[str, str]:
    """``NAME`` or ``NAME:IP`` from --net."""
    name, sep, address = text.partition(":")
    if not name or (sep and not address):
        raise CliError(f"--net {text!r}: use NAME or NAME:IP")
    return {"network": name, "address": address} if sep else {"network": name}


def _table(vms: list[Vm]) -> None:
    table(
        ["NAME", "STATE", "NODE", "CPUS", "MEMORY", "DISK", "IMAGE", "VNC"],
        [
            (
                vm.name,
                state(vm.state),
                vm.node,
                vm.cpus,
                format_size(vm.memory_mib * MIB),
                format_size(vm.disk_gib * GIB),
                vm.image_name or vm.image_id,
                vm.vnc,
            )
            for vm in vms
        ],
    )


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List VMs."""
    data = client_from(ctx).get("/v1/vms")
    vms = parse_list(Vm, data)
    emit(data, json_out, lambda: _table(vms))


@app.command()
def show(ctx: typer.Context, name: VmName, json_out: JsonOut = False) -> None:
    """Show a VM: state and why, node, accelerator, QEMU pid, VNC address."""
    data = client_from(ctx).get(_path(name))
    vm = parse(Vm, data)
    emit(data, json_out, lambda: render(vm))


def _act(ctx: typer.Context, name: str, action: str, *, force: bool, no_wait: bool, json_out: bool) -> None:
    client = client_from(ctx)
    data = client.post(f"{_path(name)}/actions/{action}", body(VmAction, force=force))
    _after(client, data, name, no_wait=no_wait, json_out=json_out, brief=True)


def _lifecycle(action: str, summary: str) -> None:
    """Register one of the flag-less lifecycle actions; they differ only in the verb."""

    def command(ctx: typer.Context, name: VmName, no_wait: NoWait = False, json_out: JsonOut = False) -> None:
        _act(ctx, name, action, force=False, no_wait=no_wait, json_out=json_out)

    command.__doc__ = summary
    app.command(action)(command)


_lifecycle("start", "Start a stopped VM.")


@app.command()
def stop(
    ctx: typer.Context,
    name: VmName,
    force: Annotated[bool, typer.Option("--force", help="Power off at once instead of ACPI shutdown.")] = False,
    no_wait: NoWait = False,
    json_out: JsonOut = False,
) -> None:
    """Stop a VM (ACPI shutdown; --force pulls the plug)."""
    _act(ctx, name, "stop", force=force, no_wait=no_wait, json_out=json_out)


_lifecycle("reboot", "Reboot a running VM.")
_lifecycle("pause", "Pause a running VM (it keeps its memory).")
_lifecycle("resume", "Resume a paused VM.")


cache_app = typer.Typer(help="The VM's disk on the node cache tier.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("drop")
def cache_drop(ctx: typer.Context, name: VmName, no_wait: NoWait = False, json_out: JsonOut = False) -> None:
    """Move the VM's disk from the node's cache into Ceph (a running guest keeps running)."""
    client = client_from(ctx)
    _after(
        client, client.post(f"{_path(name)}/cache/drop", None), name, no_wait=no_wait, json_out=json_out, brief=False
    )


snapshot_app = typer.Typer(
    help="Snapshots of the VM's disk. RBD: also while it runs (crash-consistent, as after a power cut); "
    "a local qcow2 disk: stop the VM first. Rollback always needs the VM stopped.",
    no_args_is_help=True,
)
app.add_typer(snapshot_app, name="snapshot")
SnapshotName = Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot name.")]


@snapshot_app.command("create")
def snapshot_create(ctx: typer.Context, name: VmName, snapshot: SnapshotName, json_out: JsonOut = False) -> None:
    """Snapshot the VM's disk (RBD: crash-consistent while running; local disks: VM stopped)."""
    data = client_from(ctx).post(f"{_path(name)}/snapshots", {"name": snapshot}, slow=True)
    emit(data, json_out, lambda: stderr().print(f"snapshot {name}@{snapshot} created"))


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context, name: VmName, json_out: JsonOut = False) -> None:
    """List the snapshots of the VM's disk."""
    data = client_from(ctx).get(f"{_path(name)}/snapshots")
    rows = [(s["name"], human_bytes(s["size_bytes"]), s["created"] or "-") for s in data]
    emit(data, json_out, lambda: table(["NAME", "SIZE", "CREATED"], rows))


@snapshot_app.command("rollback")
def snapshot_rollback(ctx: typer.Context, name: VmName, snapshot: SnapshotName) -> None:
    """Put the VM's disk back as it was at the snapshot (the VM must be stopped)."""
    client_from(ctx).post(f"{_path(name)}/snapshots/{seg(snapshot)}/rollback", slow=True)
    stderr().print(f"vm {name} rolled back to {snapshot}")


@snapshot_app.command("delete")
def snapshot_delete(ctx: typer.Context, name: VmName, snapshot: SnapshotName, json_out: JsonOut = False) -> None:
    """Delete a snapshot of the VM's disk."""
    client_from(ctx).request("DELETE", f"{_path(name)}/snapshots/{seg(snapshot)}", slow=True)
    deleted("snapshot", f"{name}@{snapshot}", json_out)


@app.command()
def flatten(ctx: typer.Context, name: VmName, json_out: JsonOut = False) -> None:
    """Give the VM's disk its own copy of its image's data, so the image can be deleted (RBD: while running)."""
    data = client_from(ctx).post(f"{_path(name)}/flatten", slow=True)
    emit(data, json_out, lambda: render(parse(Vm, data)))


def _interactive() -> bool:
    """Prompt only a person: scripts and pipes get no question to hang on."""
    return sys.stdin.isatty()


@app.command()
def delete(
    ctx: typer.Context,
    name: VmName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    no_wait: NoWait = False,
    json_out: JsonOut = False,
) -> None:
    """Delete a VM and its disk (asks first when run from a terminal)."""
    if not yes and _interactive() and not typer.confirm(f"Delete vm {name} and its disk?", err=True):
        typer.echo("aborted", err=True)
        raise typer.Exit(1)
    client = client_from(ctx)
    reply = operation.accepted(client, client.delete(_path(name)), no_wait=no_wait, json_out=json_out)
    if reply is None:
        return
    emit(reply.operation.model_dump(mode="json"), json_out, lambda: typer.echo(f"vm {name} deleted"))


def _write_chunk(data: Any, chunk: ConsoleChunk, json_out: bool) -> None:
    # Raw write: the serial log is the guest's bytes, not markup, and may hold escape codes.
    sys.stdout.write(json.dumps(data) + "\n" if json_out else chunk.data)
    sys.stdout.flush()


@app.command()
def console(
    ctx: typer.Context,
    name: VmName,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until Ctrl-C.")] = False,
    tail: Annotated[
        int | None, typer.Option(help="Bytes of history to show first (server default: 16 KiB).", min=1)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print each ConsoleChunk as one line of JSON.")] = False,
) -> None:
    """Print a VM's serial console log."""
    client = client_from(ctx)
    path = f"{_path(name)}/console"
    data = client.get(path, {"tail": tail} if tail else None)
    chunk = parse(ConsoleChunk, data)
    _write_chunk(data, chunk, json_out)
    if not follow:
        return
    try:
        while True:
            time.sleep(operation.POLL_SECONDS)
            data = client.get(path, {"offset": chunk.offset})
            chunk = parse(ConsoleChunk, data)
            if chunk.data:
                _write_chunk(data, chunk, json_out)
    except KeyboardInterrupt:
        return  # Ctrl-C is how --follow ends, not a failure
