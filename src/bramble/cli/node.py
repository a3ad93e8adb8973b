"""Nodes: the hosts that run VMs, with the accelerator each one can offer."""

from __future__ import annotations

import typer

from bramble.api.schemas import Node
from bramble.cli.client import client_from, parse_list
from bramble.cli.output import MIB, JsonOut, emit, human_bytes, state, table

app = typer.Typer(help="Inspect cluster nodes.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List nodes: state, capacity, accelerator (and why not KVM), VM count."""
    data = client_from(ctx).get("/v1/nodes")
    nodes = parse_list(Node, data)
    emit(data, json_out, lambda: _table(nodes))


def _table(nodes: list[Node]) -> None:
    table(
        ["NAME", "STATE", "ARCH", "CPUS", "MEMORY", "ACCEL", "ROLES", "VMS", "HEARTBEAT"],
        [
            (
                n.name,
                state(n.state),
                n.arch,
                n.cpus,
                human_bytes(n.memory_mib * MIB),
                state(n.accel, n.accel_reason),
                ",".join(n.roles),
                n.vms,
                n.last_heartbeat,
            )
            for n in nodes
        ],
    )
