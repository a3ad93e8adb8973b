"""Images: import from local files (uploaded part by part) or from URLs (fetched by the server)."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bramble.api.schemas import Image, ImageCreate
from bramble.cli import operation
from bramble.cli.client import Client, CliError, body, client_from, complete_images, parse, parse_list, seg
from bramble.cli.output import JsonOut, deleted, emit, human_bytes, panel, state, stderr, table
from bramble.cli.transfer import download_to

app = typer.Typer(help="Import and manage boot images.", no_args_is_help=True)

ImageName = Annotated[
    str,
    typer.Argument(metavar="NAME", help="Image name or id.", autocompletion=complete_images, show_default=False),
]


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _path(name: str) -> str:
    return f"/v1/images/{seg(name)}"


def _boot_parts(image: Image) -> str | None:
    parts = [part for part, present in (("kernel", image.has_kernel), ("initrd", image.has_initrd)) if present]
    return "+".join(parts) or None


def render(image: Image) -> None:
    panel(
        f"image {image.name}",
        [
            ("id", image.id),
            ("status", state(image.status)),
            ("error", image.error),
            ("arch", image.arch),
            ("format", image.format),
            ("size", human_bytes(image.size_bytes)),
            ("virtual size", human_bytes(image.virtual_size_bytes)),
            ("boot parts", _boot_parts(image)),
            ("pool", image.pool),
            ("cmdline", image.cmdline),
            ("created", image.created_at),
        ],
    )


def _from_urls(client: Client, fields: dict[str, Any], source: str, kernel: str | None, initrd: str | None) -> Any:
    """The server downloads every part; the CLI only follows the operation."""
    for option, value in (("--kernel", kernel), ("--initrd", initrd)):
        if value is not None and not _is_url(value):
            raise CliError(f"{option} must be a URL too when the disk is a URL")
    request = body(ImageCreate, **fields, source_url=source, source_kernel_url=kernel, source_initrd_url=initrd)
    reply = operation.accepted(client, client.post("/v1/images", request), no_wait=False, json_out=False)
    ref = reply.image.id if reply and reply.image else fields["name"]
    return client.get(_path(ref))


def _from_files(client: Client, fields: dict[str, Any], parts: dict[str, str]) -> Any:
    """Create a queued image, upload each part, activate; drop the image if any step fails."""
    files = {}
    for part, value in parts.items():
        if _is_url(value):
            raise CliError(f"the {part} must be a local file too when the disk is a local file")
        files[part] = Path(value)
        if not files[part].is_file():
            raise CliError(f"{value}: no such file")
    image = parse(Image, client.post("/v1/images", body(ImageCreate, **fields)))
    try:
        _upload(client, image.id, files)
        return client.post(f"{_path(image.id)}/activate", slow=True)
    except (CliError, KeyboardInterrupt):
        # A half-uploaded image is useless and holds the name; drop it so a retry just works.
        with contextlib.suppress(CliError):
            client.delete(_path(image.id))
        raise


def _upload(client: Client, image_id: str, files: dict[str, Path]) -> None:
    console = stderr()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        for part, file in files.items():
            task = progress.add_task(f"{part} {file.name}", total=file.stat().st_size)
            client.upload(f"{_path(image_id)}/data/{part}", file, partial(progress.advance, task))


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="FILE|URL", help="Disk image: local file or http(s) URL.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the new image.")],
    arch: Annotated[str | None, typer.Option(help="Guest architecture (server default: x86_64).")] = None,
    kernel: Annotated[str | None, typer.Option(help="Kernel for direct boot: file or URL, like the disk.")] = None,
    initrd: Annotated[str | None, typer.Option(help="Initrd for direct boot: file or URL, like the disk.")] = None,
    cmdline: Annotated[str | None, typer.Option(help="Kernel command line for direct boot.")] = None,
    pool: Annotated[str | None, typer.Option(help="Storage pool (default: the default pool).")] = None,
    json_out: JsonOut = False,
) -> None:
    """Import an image: upload local files, or have the server download URLs."""
    client = client_from(ctx)
    fields = {"name": name, "arch": arch, "cmdline": cmdline, "pool": pool}
    if _is_url(source):
        data = _from_urls(client, fields, source, kernel, initrd)
    else:
        parts = {"disk": source, "kernel": kernel, "initrd": initrd}
        data = _from_files(client, fields, {part: value for part, value in parts.items() if value is not None})
    image = parse(Image, data)
    emit(data, json_out, lambda: render(image))


def _table(images: list[Image]) -> None:
    table(
        ["NAME", "STATUS", "ARCH", "FORMAT", "SIZE", "VIRTUAL", "BOOT", "CREATED"],
        [
            (
                i.name,
                state(i.status),
                i.arch,
                i.format,
                human_bytes(i.size_bytes),
                human_bytes(i.virtual_size_bytes),
                _boot_parts(i),
                i.created_at,
            )
            for i in images
        ],
    )


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List images."""
    data = client_from(ctx).get("/v1/images")
    images = parse_list(Image, data)
    emit(data, json_out, lambda: _table(images))


@app.command()
def show(ctx: typer.Context, name: ImageName, json_out: JsonOut = False) -> None:
    """Show an image."""
    data = client_from(ctx).get(_path(name))
    image = parse(Image, data)
    emit(data, json_out, lambda: render(image))


@app.command("export")
def export(
    ctx: typer.Context,
    name: ImageName,
    target: Annotated[str, typer.Argument(metavar="FILE|-", help="Raw image file to write, or - for stdout.")],
) -> None:
    """Export an image's disk as a raw image (a qcow2 comes out converted)."""
    download_to(client_from(ctx), f"{_path(name)}/export", target, f"export {name}")
    if target != "-":
        stderr().print(f"exported image {name} to {target}")


@app.command()
def delete(
    ctx: typer.Context,
    name: ImageName,
    flatten: Annotated[
        bool,
        typer.Option("--flatten", help="First give the disks of the VMs cloned from it their own copy of its data."),
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """Delete an image (refused while VM disks are cloned from it, unless --flatten)."""
    if flatten:
        client_from(ctx).request("DELETE", _path(name), params={"flatten": "true"}, slow=True)
    else:
        client_from(ctx).delete(_path(name))
    deleted("image", name, json_out)
