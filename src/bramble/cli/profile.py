"""Boot profiles: what a machine boots (kernel + initrd, an iPXE template, or its local disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from bramble.api.schemas import Profile, ProfileCreate, ProfileList
from bramble.cli.client import CliError, body, client_from, parse, seg
from bramble.cli.machine import Reason, complete_profiles, warn_git, warn_problems
from bramble.cli.output import JsonOut, emit, panel, table

app = typer.Typer(help="Boot profiles for bare-metal machines.", no_args_is_help=True)

ProfileName = Annotated[
    str, typer.Argument(metavar="NAME", help="Profile name.", autocompletion=complete_profiles, show_default=False)
]
MAX_TEMPLATE_BYTES = 64 * 1024


def _path(name: str) -> str:
    return f"/v1/profiles/{seg(name)}"


def _what(profile: Profile) -> str:
    if profile.kind == "kernel":
        return f"{profile.kernel} ({profile.transport})"
    if profile.kind == "ipxe":
        return "iPXE template"
    return "local disk"


def render(profile: Profile) -> None:
    pairs: list[tuple[str, str | None]] = [
        ("kind", profile.kind + (" (built in)" if profile.builtin else "")),
        ("default", "yes" if profile.default else "no"),
        ("description", profile.description),
    ]
    if profile.kind == "kernel":
        pairs += [
            ("kernel", profile.kernel),
            ("initrd", ", ".join(profile.initrd)),
            ("cmdline", profile.cmdline),
            ("transport", profile.transport),
        ]
    pairs += [("used by", ", ".join(profile.used_by)), ("file", profile.path)]
    if profile.commit:
        pairs.append(("commit", profile.commit[:12]))
    panel(f"profile {profile.name}", pairs)
    if profile.template is not None:
        typer.echo(profile.template, nl=not profile.template.endswith("\n"))


def _read_template(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise CliError(f"{path} is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None


@app.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the profile (its file name).")],
    kernel: Annotated[str | None, typer.Option(help="Kernel: path under the boot files dir, or URL.")] = None,
    initrd: Annotated[list[str] | None, typer.Option("--initrd", help="Initrd (repeatable, in order).")] = None,
    cmdline: Annotated[str | None, typer.Option(help="Kernel command line.")] = None,
    transport: Annotated[
        Literal["http", "tftp"] | None, typer.Option(help="How the machine fetches kernel and initrd (default http).")
    ] = None,
    ipxe_file: Annotated[
        Path | None, typer.Option("--ipxe-file", help="An iPXE script (Jinja2 template) instead of a kernel.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Boot the local disk.")] = False,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing profile of that name.")] = False,
    reason: Reason = None,
    json_out: JsonOut = False,
) -> None:
    """Add a profile: --kernel [--initrd ...] [--cmdline ...], or --ipxe-file FILE, or --local."""
    chosen = [flag for flag, given in (("--kernel", kernel), ("--ipxe-file", ipxe_file), ("--local", local)) if given]
    if len(chosen) != 1:
        raise CliError("give exactly one of --kernel, --ipxe-file or --local")
    if (initrd or cmdline or transport) and kernel is None:
        raise CliError("--initrd, --cmdline and --transport go with --kernel")
    kind = "kernel" if kernel else "ipxe" if ipxe_file else "local"
    request = body(
        ProfileCreate,
        name=name,
        kind=kind,
        kernel=kernel,
        initrd=initrd or None,
        cmdline=cmdline,
        transport=transport,
        template=_read_template(ipxe_file) if ipxe_file else None,
        description=description,
        reason=reason,
    )
    client = client_from(ctx)
    data = client.request("PUT", _path(name), json=request) if replace else client.post("/v1/profiles", request)
    profile = parse(Profile, data)
    warn_git(data)
    emit(data, json_out, lambda: render(profile))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List profiles (built-in ones too); files that are wrong are named on stderr."""
    data = client_from(ctx).get("/v1/profiles")
    reply = parse(ProfileList, data)
    warn_problems(reply.problems)
    rows = [
        (
            p.name + (" *" if p.default else ""),
            p.kind + (" (built in)" if p.builtin else ""),
            _what(p),
            len(p.used_by),
            p.description,
        )
        for p in reply.items
    ]
    emit(data, json_out, lambda: table(["NAME", "KIND", "BOOTS", "MACHINES", "DESCRIPTION"], rows))


@app.command()
def show(ctx: typer.Context, name: ProfileName, json_out: JsonOut = False) -> None:
    """Show a profile (with its template, if any)."""
    data = client_from(ctx).get(_path(name))
    profile = parse(Profile, data)
    emit(data, json_out, lambda: render(profile))


@app.command()
def rm(ctx: typer.Context, name: ProfileName, reason: Reason = None, json_out: JsonOut = False) -> None:
    """Remove a profile no machine uses."""
    data = client_from(ctx).request("DELETE", _path(name), params={"reason": reason} if reason else None)
    warn_git(data)
    emit(data, json_out, lambda: typer.echo(f"profile {name} removed"))
