"""Volumes: disks that outlive VMs; attach, snapshot, export and import them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import urlencode

import typer

from bramble.cli.client import CHUNK_SIZE, CliError, client_from, name_completer, seg
from bramble.cli.output import JsonOut, deleted, emit, human_bytes, panel, parse_size, state, stderr, table
from bramble.cli.transfer import download_to
from bramble.cli.transfer import progress as _progress

MIB = 1024 * 1024

app = typer.Typer(help="Volumes: disks that outlive VMs.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Snapshots of a detached volume.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")

complete_volumes = name_completer("/v1/volumes")
VolumeName = Annotated[
    str,
    typer.Argument(metavar="VOLUME", help="Volume name or id.", autocompletion=complete_volumes, show_default=False),
]
SizeOption = Annotated[str, typer.Option("--size", "-s", help="Size, e.g. 512M, 10G (bare numbers are GiB).")]


def _path(name: str) -> str:
    return f"/v1/volumes/{seg(name)}"


def _size(text: str) -> int:
    """Bare numbers are GiB like VM disks; any whole number of MiB is accepted."""
    if text.strip().isdigit():
        text = f"{text.strip()}G"
    return parse_size(text, MIB, "volume size") * MIB


def render(vol: dict[str, Any]) -> None:
    panel(
        f"volume {vol['name']}",
        [
            ("id", vol["id"]),
            ("state", state(vol["state"])),
            ("size", human_bytes(vol["size_bytes"])),
            ("storage", f"{vol['driver']} ({vol['pool']})" if vol.get("pool") else vol["driver"]),
            ("vm", vol.get("vm")),
            ("device", vol.get("device")),
            ("created", vol["created_at"]),
        ],
    )


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new volume.")],
    size: SizeOption,
    pool: Annotated[str | None, typer.Option(help="Storage pool (default: the cloud's).")] = None,
    json_out: JsonOut = False,
) -> None:
    """Create a blank volume."""
    request: dict[str, Any] = {"name": name, "size_bytes": _size(size)}
    if pool is not None:
        request["pool"] = pool
    data = client_from(ctx).post("/v1/volumes", request, slow=True)
    emit(data, json_out, lambda: render(data))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List volumes."""
    data = client_from(ctx).get("/v1/volumes")
    emit(
        data,
        json_out,
        lambda: table(
            ["NAME", "STATE", "SIZE", "VM", "STORAGE", "CREATED"],
            [
                (v["name"], state(v["state"]), human_bytes(v["size_bytes"]), v["vm"], v["driver"], v["created_at"])
                for v in data
            ],
        ),
    )


@app.command()
def show(ctx: typer.Context, name: VolumeName, json_out: JsonOut = False) -> None:
    """Show a volume."""
    data = client_from(ctx).get(_path(name))
    emit(data, json_out, lambda: render(data))


@app.command()
def delete(ctx: typer.Context, name: VolumeName, json_out: JsonOut = False) -> None:
    """Delete a volume (refused while attached)."""
    client_from(ctx).delete(_path(name))
    deleted("volume", name, json_out)


@app.command()
def attach(
    ctx: typer.Context,
    name: VolumeName,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name or id.")],
    json_out: JsonOut = False,
) -> None:
    """Attach a volume to a VM (it appears as the next virtio disk)."""
    data = client_from(ctx).post(f"{_path(name)}/attach", {"vm": vm}, slow=True)
    emit(data, json_out, lambda: render(data))


@app.command()
def detach(ctx: typer.Context, name: VolumeName, json_out: JsonOut = False) -> None:
    """Detach a volume from its VM."""
    data = client_from(ctx).post(f"{_path(name)}/detach", slow=True)
    emit(data, json_out, lambda: render(data))


@app.command()
def resize(ctx: typer.Context, name: VolumeName, size: SizeOption, json_out: JsonOut = False) -> None:
    """Grow a volume (shrinking is refused)."""
    data = client_from(ctx).post(f"{_path(name)}/resize", {"size_bytes": _size(size)}, slow=True)
    emit(data, json_out, lambda: render(data))


@app.command()
def flatten(ctx: typer.Context, name: VolumeName, json_out: JsonOut = False) -> None:
    """Give a volume its own copy of any data it shares (so its source can go)."""
    data = client_from(ctx).post(f"{_path(name)}/flatten", slow=True)
    emit(data, json_out, lambda: render(data))


# ---------------------------------------------------------------------- snapshots
SnapshotName = Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot name.")]


@snapshot_app.command("create")
def snapshot_create(ctx: typer.Context, name: VolumeName, snapshot: SnapshotName, json_out: JsonOut = False) -> None:
    """Snapshot a detached volume."""
    data = client_from(ctx).post(f"{_path(name)}/snapshots", {"name": snapshot}, slow=True)
    emit(data, json_out, lambda: stderr().print(f"snapshot {name}@{snapshot} created"))


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context, name: VolumeName, json_out: JsonOut = False) -> None:
    """List a volume's snapshots."""
    data = client_from(ctx).get(f"{_path(name)}/snapshots")
    emit(
        data,
        json_out,
        lambda: table(
            ["NAME", "SIZE", "CREATED"], [(s["name"], human_bytes(s["size_bytes"]), s["created"]) for s in data]
        ),
    )


@snapshot_app.command("rollback")
def snapshot_rollback(ctx: typer.Context, name: VolumeName, snapshot: SnapshotName) -> None:
    """Put a detached volume's data back as it was at the snapshot."""
    client_from(ctx).post(f"{_path(name)}/snapshots/{seg(snapshot)}/rollback", slow=True)
    stderr().print(f"volume {name} rolled back to {snapshot}")


@snapshot_app.command("delete")
def snapshot_delete(ctx: typer.Context, name: VolumeName, snapshot: SnapshotName, json_out: JsonOut = False) -> None:
    """Delete a snapshot."""
    client_from(ctx).request("DELETE", f"{_path(name)}/snapshots/{seg(snapshot)}", slow=True)
    deleted("snapshot", f"{name}@{snapshot}", json_out)


# ---------------------------------------------------------------------- export / import
@app.command("export")
def export(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="VOLUME[@SNAPSHOT]", help="What to export.")],
    target: Annotated[str, typer.Argument(metavar="FILE|-", help="Raw image file to write, or - for stdout.")],
) -> None:
    """Export a volume (or one of its snapshots) as a raw image."""
    name, _, snapshot = source.partition("@")
    if not name or (source.endswith("@") and not snapshot):
        raise CliError(f"bad source {source!r}: use VOLUME or VOLUME@SNAPSHOT")
    params = {"snapshot": snapshot} if snapshot else None
    download_to(client_from(ctx), f"{_path(name)}/export", target, f"export {source}", params=params)
    if target == "-":
        return
    stderr().print(f"exported {source} to {target}")


def _stream(handle: IO[bytes], on_chunk: Callable[[int], None]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK_SIZE):
        yield chunk
        on_chunk(len(chunk))


@app.command("import")
def import_(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new volume.")],
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="Raw image file to read, or - for stdin.")],
    pool: Annotated[str | None, typer.Option(help="Storage pool (default: the default pool).")] = None,
    json_out: JsonOut = False,
) -> None:
    """Create a volume from a raw image (what `volume export` writes)."""
    client = client_from(ctx)
    path = f"{_path(name)}/import" + (f"?{urlencode({'pool': pool})}" if pool is not None else "")
    headers = {"Content-Type": "application/octet-stream"}
    if source == "-":
        data = client.request(
            "PUT", path, content=_stream(sys.stdin.buffer, lambda _: None), headers=headers, slow=True
        )
    else:
        file = Path(source)
        if not file.is_file():
            raise CliError(f"{source}: no such file")
        size = file.stat().st_size
        headers["Content-Length"] = str(size)
        try:
            with _progress() as progress, file.open("rb") as handle:
                task = progress.add_task(f"import {file.name}", total=size)
                content = _stream(handle, lambda n: progress.advance(task, n))
                data = client.request("PUT", path, content=content, headers=headers, slow=True)
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc.strerror or exc}") from None
    emit(data, json_out, lambda: render(data))
