"""VM networks: a subnet with a bridge on every node that has VMs on it, DHCP from Bramble."""

from __future__ import annotations

from typing import Annotated

import typer

from bramble.api.schemas import Network, NetworkCreate
from bramble.cli.client import CliError, body, client_from, name_completer, parse, parse_list, seg
from bramble.cli.output import JsonOut, deleted, emit, panel, table

app = typer.Typer(help="Manage VM networks.", no_args_is_help=True)

complete_networks = name_completer("/v1/networks")

NetName = Annotated[
    str,
    typer.Argument(metavar="NAME", help="Network name or id.", autocompletion=complete_networks, show_default=False),
]


def _render(net: Network) -> None:
    panel(
        f"network {net.name}",
        [
            ("id", net.id),
            ("cidr", net.cidr),
            ("gateway", net.gateway),
            ("dns", ", ".join(net.dns) or None),
            ("nat", "yes" if net.nat else "no"),
            ("uplink", net.uplink),
            ("vlan", net.vlan),
            ("bridge", net.bridge),
            ("nics", net.nics),
            *((f"  {p.address}", f"{p.vm} ({p.mac})") for p in net.ports),
            ("created", net.created_at),
        ],
    )


def _dns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    servers = [part.strip() for part in text.split(",") if part.strip()]
    if not servers:
        raise CliError(f"--dns {text!r} names no server; give addresses separated by commas")
    return servers


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new network.", show_default=False)],
    cidr: Annotated[str, typer.Option("--cidr", help="IPv4 subnet, like 10.20.0.0/24.", show_default=False)],
    gateway: Annotated[str | None, typer.Option(help="Gateway address (default: the first host).")] = None,
    dns: Annotated[str | None, typer.Option(help="DNS servers for DHCP, comma separated.", metavar="IP,...")] = None,
    nat: Annotated[bool, typer.Option("--nat", help="Masquerade the subnet to anything outside it.")] = False,
    uplink: Annotated[str | None, typer.Option(help="Host interface for NAT or the VLAN.", metavar="IFACE")] = None,
    vlan: Annotated[int | None, typer.Option(help="802.1q id on the uplink (1-4094).", metavar="ID")] = None,
    json_out: JsonOut = False,
) -> None:
    """Create a network."""
    if vlan is not None and uplink is None:
        raise CliError("--vlan needs --uplink, the interface that carries it")
    request = body(
        NetworkCreate, name=name, cidr=cidr, gateway=gateway, dns=_dns(dns), nat=nat or None, uplink=uplink, vlan=vlan
    )
    data = client_from(ctx).post("/v1/networks", request)
    net = parse(Network, data)
    emit(data, json_out, lambda: _render(net))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List networks."""
    data = client_from(ctx).get("/v1/networks")
    nets = parse_list(Network, data)
    emit(
        data,
        json_out,
        lambda: table(
            ["NAME", "CIDR", "GATEWAY", "NAT", "VLAN", "NICS", "BRIDGE"],
            [(n.name, n.cidr, n.gateway, "yes" if n.nat else "no", n.vlan, n.nics, n.bridge) for n in nets],
        ),
    )


@app.command()
def show(ctx: typer.Context, name: NetName, json_out: JsonOut = False) -> None:
    """Show a network and the NICs on it."""
    data = client_from(ctx).get(f"/v1/networks/{seg(name)}")
    net = parse(Network, data)
    emit(data, json_out, lambda: _render(net))


@app.command()
def delete(ctx: typer.Context, name: NetName, json_out: JsonOut = False) -> None:
    """Delete a network (refused while VMs use it; the error names them)."""
    client_from(ctx).delete(f"/v1/networks/{seg(name)}")
    deleted("network", name, json_out)
