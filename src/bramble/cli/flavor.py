"""Flavors: named CPU/memory/disk sizes, so VMs need not spell them out."""

from __future__ import annotations

from typing import Annotated

import typer

from bramble.api.schemas import Flavor, FlavorCreate
from bramble.cli.client import body, client_from, complete_flavors, parse, parse_list, seg
from bramble.cli.output import (
    GIB,
    MIB,
    JsonOut,
    deleted,
    emit,
    format_size,
    panel,
    parse_disk,
    parse_memory,
    table,
)

app = typer.Typer(help="Manage VM size presets.", no_args_is_help=True)

FlavorName = Annotated[
    str, typer.Argument(metavar="NAME", help="Flavor name or id.", autocompletion=complete_flavors, show_default=False)
]


def _sizes(flavor: Flavor) -> list[tuple[str, str | int]]:
    return [
        ("cpus", flavor.cpus),
        ("memory", format_size(flavor.memory_mib * MIB)),
        ("disk", format_size(flavor.disk_gib * GIB)),
    ]


def _row(flavor: Flavor) -> tuple[str | int, ...]:
    return (flavor.name, *(value for _, value in _sizes(flavor)), flavor.id)


def _render(flavor: Flavor) -> None:
    panel(f"flavor {flavor.name}", [("id", flavor.id), *_sizes(flavor)])


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new flavor.", show_default=False)],
    cpus: Annotated[int, typer.Option(help="Virtual CPUs.", min=1)],
    memory: Annotated[str, typer.Option(help="Memory: MiB, or with a unit (2G).", metavar="SIZE")],
    disk: Annotated[str, typer.Option(help="Disk: GiB, or with a unit (20G).", metavar="SIZE")],
    json_out: JsonOut = False,
) -> None:
    """Create a flavor."""
    request = body(FlavorCreate, name=name, cpus=cpus, memory_mib=parse_memory(memory), disk_gib=parse_disk(disk))
    data = client_from(ctx).post("/v1/flavors", request)
    flavor = parse(Flavor, data)
    emit(data, json_out, lambda: _render(flavor))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List flavors."""
    data = client_from(ctx).get("/v1/flavors")
    flavors = parse_list(Flavor, data)
    emit(data, json_out, lambda: table(["NAME", "CPUS", "MEMORY", "DISK", "ID"], [_row(f) for f in flavors]))


@app.command()
def show(ctx: typer.Context, name: FlavorName, json_out: JsonOut = False) -> None:
    """Show a flavor."""
    data = client_from(ctx).get(f"/v1/flavors/{seg(name)}")
    flavor = parse(Flavor, data)
    emit(data, json_out, lambda: _render(flavor))


@app.command()
def delete(ctx: typer.Context, name: FlavorName, json_out: JsonOut = False) -> None:
    """Delete a flavor (VMs made from it keep their sizes)."""
    client_from(ctx).delete(f"/v1/flavors/{seg(name)}")
    deleted("flavor", name, json_out)
