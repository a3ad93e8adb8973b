"""Bare-metal machines: the inventory files, which boot profile each boots, and Wake-on-LAN."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated, Any

import typer

from bramble.api.schemas import InventoryProblem, Machine, MachineCreate, MachineList, MachineUpdate, WakeResult
from bramble.cli.client import COMPLETION_TIMEOUT, Client, CliError, body, client_from, load_config, parse, seg
from bramble.cli.output import JsonOut, emit, panel, table

app = typer.Typer(help="Bare-metal machines: inventory, boot profile, Wake-on-LAN.", no_args_is_help=True)


def inventory_completer(path: str) -> Callable[[typer.Context, str], list[str]]:
    """Names from an inventory list (``{"items": [...]}``); silent and empty on any failure."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        with contextlib.suppress(Exception):
            root = ctx.find_root()
            client = Client(load_config(root.params.get("url"), root.params.get("token")), timeout=COMPLETION_TIMEOUT)
            try:
                items = client.get(path)["items"]
            finally:
                client.close()
            return [item["name"] for item in items if str(item.get("name", "")).startswith(incomplete)]
        return []

    return complete


complete_machines = inventory_completer("/v1/machines")
complete_profiles = inventory_completer("/v1/profiles")

MachineName = Annotated[
    str, typer.Argument(metavar="NAME", help="Machine name.", autocompletion=complete_machines, show_default=False)
]
Reason = Annotated[str | None, typer.Option(help="Why: goes into the git commit message.")]


def _path(name: str) -> str:
    return f"/v1/machines/{seg(name)}"


def warn_problems(problems: list[InventoryProblem]) -> None:
    """Inventory files that are skipped: on stderr, so --json and tables stay clean on stdout."""
    for p in problems:
        where = f"{p.path}:{p.line}" if p.line else p.path
        typer.echo(f"warning: {where}: {p.message}", err=True)


def warn_git(reply: Any) -> None:
    if isinstance(reply, dict) and reply.get("git_error"):
        typer.echo(f"warning: written, but not committed to git: {reply['git_error']}", err=True)


def _profile_cell(machine: Machine) -> str:
    return machine.boot_profile if machine.profile else f"{machine.boot_profile} (default)"


def render(machine: Machine) -> None:
    panel(
        f"machine {machine.name}",
        [
            ("mac", machine.mac),
            ("ip", machine.ip),
            ("hostname", machine.hostname),
            ("arch", machine.arch),
            ("profile", _profile_cell(machine)),
            ("groups", ", ".join(machine.groups)),
            ("wake at", ", ".join(machine.wake_at)),
            ("interface", machine.interface),
            ("discovered", "yes" if machine.discovered else "no"),
            ("notes", machine.notes),
            ("file", machine.path),
            ("created", machine.created_at),
            ("updated", machine.updated_at),
            ("commit", machine.commit[:12] if machine.commit else None),
        ],
    )


def _show_change(data: Any, json_out: bool) -> None:
    machine = parse(Machine, data)
    warn_git(data)
    emit(data, json_out, lambda: render(machine))


@app.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the machine (its file name).")],
    mac: Annotated[str, typer.Option(help="MAC address of the NIC it boots from.")],
    ip: Annotated[str | None, typer.Option(help="Fixed IPv4 address for DHCP.")] = None,
    hostname: Annotated[str | None, typer.Option(help="Host name sent by DHCP.")] = None,
    arch: Annotated[str | None, typer.Option(help="x86_64 (default), aarch64, ...")] = None,
    profile: Annotated[
        str | None, typer.Option(help="Boot profile (default: the default one).", autocompletion=complete_profiles)
    ] = None,
    notes: Annotated[str | None, typer.Option(help="Free text.")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Group (repeatable).")] = None,
    wake_at: Annotated[
        list[str] | None, typer.Option("--wake-at", help="Power on at [DAYS] HH:MM, e.g. 'mon-fri 07:30' (repeatable).")
    ] = None,
    interface: Annotated[str | None, typer.Option(help="Interface for Wake-on-LAN.")] = None,
    reason: Reason = None,
    json_out: JsonOut = False,
) -> None:
    """Add a machine to the inventory."""
    request = body(
        MachineCreate,
        name=name,
        mac=mac,
        ip=ip,
        hostname=hostname,
        arch=arch,
        profile=profile,
        notes=notes,
        groups=group or None,
        wake_at=wake_at or None,
        interface=interface,
        reason=reason,
    )
    _show_change(client_from(ctx).post("/v1/machines", request), json_out)


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List machines; files that are wrong are named on stderr with their line."""
    data = client_from(ctx).get("/v1/machines")
    reply = parse(MachineList, data)
    warn_problems(reply.problems)
    rows = [
        (m.name, m.mac, m.ip, m.arch, _profile_cell(m), ", ".join(m.groups), "yes" if m.discovered else "")
        for m in reply.items
    ]
    emit(data, json_out, lambda: table(["NAME", "MAC", "IP", "ARCH", "PROFILE", "GROUPS", "DISCOVERED"], rows))


@app.command()
def show(ctx: typer.Context, name: MachineName, json_out: JsonOut = False) -> None:
    """Show a machine."""
    data = client_from(ctx).get(_path(name))
    machine = parse(Machine, data)
    emit(data, json_out, lambda: render(machine))


def _patch(ctx: typer.Context, name: str, changes: dict[str, Any], reason: str | None, json_out: bool) -> None:
    if not changes:
        raise CliError("nothing to change: give at least one option (see --help)")
    request = body(MachineUpdate, **changes, reason=reason)  # checks the values that are set
    request.update({key: None for key, value in changes.items() if value is None})  # null clears a field
    data = client_from(ctx).request("PATCH", _path(name), json=request)
    _show_change(data, json_out)


@app.command("set-profile")
def set_profile(
    ctx: typer.Context,
    name: MachineName,
    profile: Annotated[
        str | None,
        typer.Argument(
            metavar="PROFILE", help="Profile to boot.", autocompletion=complete_profiles, show_default=False
        ),
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="Boot the default profile instead.")] = False,
    reason: Reason = None,
    json_out: JsonOut = False,
) -> None:
    """Choose what the machine boots next (a profile name, or --default)."""
    if (profile is None) == (not default):
        raise CliError("give a PROFILE or --default (not both)")
    _patch(ctx, name, {"profile": profile}, reason, json_out)


@app.command("set")
def set_(
    ctx: typer.Context,
    name: MachineName,
    mac: Annotated[str | None, typer.Option(help="New MAC address.")] = None,
    ip: Annotated[str | None, typer.Option(help="Fixed IPv4 address ('' clears it).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Host name ('' clears it).")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture.")] = None,
    notes: Annotated[str | None, typer.Option(help="Free text (replaces the notes).")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Groups (repeatable; replaces the list).")] = None,
    no_groups: Annotated[bool, typer.Option("--no-groups", help="Remove it from every group.")] = False,
    wake_at: Annotated[list[str] | None, typer.Option("--wake-at", help="Power-on times (replaces the list).")] = None,
    no_wake: Annotated[bool, typer.Option("--no-wake", help="Remove every power-on time.")] = False,
    interface: Annotated[str | None, typer.Option(help="Wake-on-LAN interface ('' clears it).")] = None,
    reason: Reason = None,
    json_out: JsonOut = False,
) -> None:
    """Change some fields of a machine; the others stay as they are."""
    changes: dict[str, Any] = {}
    for key, value in (("mac", mac), ("arch", arch), ("notes", notes)):
        if value is not None:
            changes[key] = value
    for key, value in (("ip", ip), ("hostname", hostname), ("interface", interface)):
        if value is not None:
            changes[key] = value or None
    if group or no_groups:
        changes["groups"] = [] if no_groups else group
    if wake_at or no_wake:
        changes["wake_at"] = [] if no_wake else wake_at
    _patch(ctx, name, changes, reason, json_out)


@app.command()
def rm(ctx: typer.Context, name: MachineName, reason: Reason = None, json_out: JsonOut = False) -> None:
    """Remove a machine from the inventory (its file goes; git keeps the history)."""
    data = client_from(ctx).request("DELETE", _path(name), params={"reason": reason} if reason else None)
    warn_git(data)
    emit(data, json_out, lambda: typer.echo(f"machine {name} removed"))


@app.command()
def wake(ctx: typer.Context, name: MachineName, json_out: JsonOut = False) -> None:
    """Send a Wake-on-LAN magic packet to the machine."""
    data = client_from(ctx).post(f"{_path(name)}/wake")
    result = parse(WakeResult, data)
    emit(
        data,
        json_out,
        lambda: typer.echo(f"magic packet for {result.machine} ({result.mac}) sent on {result.interface}"),
    )
