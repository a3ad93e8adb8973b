"""Floating IPs: public addresses from a network, mapped 1:1 to a VM's NIC (DNAT in, SNAT out)."""

from __future__ import annotations

from typing import Annotated

import typer

from bramble.api.schemas import FloatingIp, FloatingIpAttach, FloatingIpCreate
from bramble.cli.client import body, client_from, complete_vms, name_completer, parse, parse_list, seg
from bramble.cli.output import JsonOut, deleted, emit, panel, table

app = typer.Typer(help="Floating IPs: public addresses mapped to a VM's NIC.", no_args_is_help=True)

complete_networks = name_completer("/v1/networks")

FipRef = Annotated[str, typer.Argument(metavar="FIP", help="Floating address (or its id).", show_default=False)]


def _path(ref: str) -> str:
    return f"/v1/floating-ips/{seg(ref)}"


def _mapped(fip: FloatingIp) -> str | None:
    if fip.vm is None:
        return None
    return f"{fip.vm} nic{fip.nic} {fip.private_address}"


def _render(fip: FloatingIp) -> None:
    panel(
        f"floating IP {fip.address}",
        [
            ("id", fip.id),
            ("network", fip.network),
            ("attached", _mapped(fip) or "no"),
            ("node", fip.node),
            ("created", fip.created_at),
        ],
    )


@app.command()
def create(
    ctx: typer.Context,
    net: Annotated[
        str,
        typer.Option("--net", help="Network the address comes from.", autocompletion=complete_networks),
    ],
    address: Annotated[
        str | None, typer.Option("--address", help="A fixed address (default: the next free one).", metavar="IP")
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Take a floating address from a network (IPAM: never twice, quarantined after a delete)."""
    data = client_from(ctx).post("/v1/floating-ips", body(FloatingIpCreate, network=net, address=address))
    fip = parse(FloatingIp, data)
    emit(data, json_out, lambda: _render(fip))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List floating IPs and what each is mapped to."""
    data = client_from(ctx).get("/v1/floating-ips")
    fips = parse_list(FloatingIp, data)
    rows = [
        (f.address, f.network, f.vm, f"nic{f.nic}" if f.nic is not None else None, f.private_address, f.node)
        for f in fips
    ]
    emit(data, json_out, lambda: table(["ADDRESS", "NETWORK", "VM", "NIC", "PRIVATE", "NODE"], rows))


@app.command()
def show(ctx: typer.Context, fip: FipRef, json_out: JsonOut = False) -> None:
    """Show a floating IP."""
    data = client_from(ctx).get(_path(fip))
    shown = parse(FloatingIp, data)
    emit(data, json_out, lambda: _render(shown))


@app.command()
def attach(
    ctx: typer.Context,
    fip: FipRef,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name or id.", autocompletion=complete_vms)],
    nic: Annotated[
        int | None, typer.Option("--nic", help="NIC position (default: its first NIC on another network).", min=0)
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Map the floating IP to the VM's NIC: inbound DNAT, and the VM's own traffic leaves with it."""
    data = client_from(ctx).post(f"{_path(fip)}/attach", body(FloatingIpAttach, vm=vm, nic=nic))
    shown = parse(FloatingIp, data)
    emit(data, json_out, lambda: typer.echo(f"floating IP {shown.address} -> {_mapped(shown)}"))


@app.command()
def detach(ctx: typer.Context, fip: FipRef, json_out: JsonOut = False) -> None:
    """Unmap the floating IP (it stays allocated)."""
    data = client_from(ctx).post(f"{_path(fip)}/detach")
    shown = parse(FloatingIp, data)
    emit(data, json_out, lambda: typer.echo(f"floating IP {shown.address} detached"))


@app.command()
def delete(
    ctx: typer.Context,
    fip: FipRef,
    detach_first: Annotated[
        bool, typer.Option("--detach", help="Detach it first if attached (else it is refused).")
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """Give the address back (refused while attached, unless --detach)."""
    client_from(ctx).request("DELETE", _path(fip), params={"detach": "true"} if detach_first else None)
    deleted("floating IP", fip, json_out)
