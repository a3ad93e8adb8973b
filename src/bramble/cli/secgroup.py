"""Security groups: allow-lists for VM NICs, changed live on running VMs."""

from __future__ import annotations

from typing import Annotated

import typer

from bramble.api.schemas import SecurityGroup, SecurityGroupCreate, SecurityRuleCreate
from bramble.cli.client import CliError, body, client_from, name_completer, parse, parse_list, seg
from bramble.cli.output import JsonOut, deleted, emit, panel, table

app = typer.Typer(help="Manage security groups (firewall allow-lists for VM NICs).", no_args_is_help=True)
rule_app = typer.Typer(help="Add or remove a group's rules.", no_args_is_help=True)
app.add_typer(rule_app, name="rule")

complete_groups = name_completer("/v1/security-groups")

GroupName = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="Security group name or id.", autocompletion=complete_groups, show_default=False
    ),
]


def _ports(rule_min: int | None, rule_max: int | None) -> str:
    if rule_min is None:
        return "any"
    return str(rule_min) if rule_max in (None, rule_min) else f"{rule_min}-{rule_max}"


def _render(group: SecurityGroup) -> None:
    panel(
        f"security group {group.name}",
        [
            ("id", group.id),
            ("description", group.description or None),
            ("vms", ", ".join(group.vms) or None),
            *(
                (
                    f"  {r.direction}",
                    f"{r.protocol} port {_ports(r.port_min, r.port_max)} "
                    f"{'group ' + r.remote_group if r.remote_group else (r.cidr or 'anywhere')}  [{r.id}]",
                )
                for r in group.rules
            ),
            ("created", group.created_at),
        ],
    )


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new group.", show_default=False)],
    description: Annotated[str | None, typer.Option(help="What the group is for.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Create an empty security group (it allows nothing until rules are added)."""
    data = client_from(ctx).post("/v1/security-groups", body(SecurityGroupCreate, name=name, description=description))
    group = parse(SecurityGroup, data)
    emit(data, json_out, lambda: _render(group))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List security groups."""
    data = client_from(ctx).get("/v1/security-groups")
    groups = parse_list(SecurityGroup, data)
    emit(
        data,
        json_out,
        lambda: table(
            ["NAME", "RULES", "VMS", "DESCRIPTION"], [(g.name, len(g.rules), len(g.vms), g.description) for g in groups]
        ),
    )


@app.command()
def show(ctx: typer.Context, name: GroupName, json_out: JsonOut = False) -> None:
    """Show a group's rules (with their ids) and the VMs in it."""
    data = client_from(ctx).get(f"/v1/security-groups/{seg(name)}")
    group = parse(SecurityGroup, data)
    emit(data, json_out, lambda: _render(group))


@app.command()
def delete(ctx: typer.Context, name: GroupName, json_out: JsonOut = False) -> None:
    """Delete a group (refused while VMs are in it or other groups' rules name it)."""
    client_from(ctx).delete(f"/v1/security-groups/{seg(name)}")
    deleted("security group", name, json_out)


def _port_range(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    low, sep, high = text.partition("-")
    try:
        return int(low), int(high) if sep else None
    except ValueError:
        raise CliError(f"--port {text!r}: use PORT or FIRST-LAST") from None


@rule_app.command("add")
def rule_add(
    ctx: typer.Context,
    name: GroupName,
    direction: Annotated[str, typer.Option(help="ingress (to the VM) or egress (from it).", metavar="DIR")],
    protocol: Annotated[str, typer.Option(help="any, tcp, udp or icmp.")] = "any",
    port: Annotated[str | None, typer.Option(help="Port or range (tcp/udp), like 22 or 8000-8100.")] = None,
    cidr: Annotated[str | None, typer.Option(help="Remote IPv4 network (default: anywhere).")] = None,
    remote_group: Annotated[str | None, typer.Option(help="Remote side: the members of this group.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Allow traffic; running VMs in the group get the rule at once."""
    port_min, port_max = _port_range(port)
    request = body(
        SecurityRuleCreate,
        direction=direction,
        protocol=protocol,
        port_min=port_min,
        port_max=port_max,
        cidr=cidr,
        remote_group=remote_group,
    )
    data = client_from(ctx).post(f"/v1/security-groups/{seg(name)}/rules", request)
    group = parse(SecurityGroup, data)
    emit(data, json_out, lambda: _render(group))


@rule_app.command("delete")
def rule_delete(
    ctx: typer.Context,
    name: GroupName,
    rule_id: Annotated[str, typer.Argument(metavar="RULE_ID", help="From `secgroup show`.", show_default=False)],
    json_out: JsonOut = False,
) -> None:
    """Remove a rule; running VMs lose it at once."""
    client_from(ctx).delete(f"/v1/security-groups/{seg(name)}/rules/{seg(rule_id)}")
    deleted("rule", rule_id, json_out)
