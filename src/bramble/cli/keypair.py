"""SSH keypairs for VMs (`vm create --key`): generate or import, list, delete."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bramble.api.schemas import Keypair, KeypairCreate
from bramble.cli.client import CliError, body, client_from, name_completer, parse, parse_list, seg
from bramble.cli.output import JsonOut, deleted, emit, panel, stderr, table

app = typer.Typer(help="Manage SSH keypairs given to VMs through cloud-init.", no_args_is_help=True)

KeyName = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="Keypair name or id.", autocompletion=name_completer("/v1/keypairs"), show_default=False
    ),
]
NewName = Annotated[str, typer.Argument(metavar="NAME", help="Name of the new keypair.", show_default=False)]


def _render(key: Keypair) -> None:
    panel(
        f"keypair {key.name}",
        [("id", key.id), ("fingerprint", key.fingerprint), ("public key", key.public_key), ("created", key.created_at)],
    )


@app.command()
def create(ctx: typer.Context, name: NewName, json_out: JsonOut = False) -> None:
    """Generate an ed25519 pair and print its private key (stdout, this one time only: save it)."""
    data = client_from(ctx).post("/v1/keypairs", body(KeypairCreate, name=name))
    key = parse(Keypair, data)
    if json_out:
        emit(data, json_out, lambda: None)
        return
    if not key.private_key:
        raise CliError("the API answered without a private key")
    sys.stdout.write(key.private_key if key.private_key.endswith("\n") else key.private_key + "\n")
    stderr().print(f"keypair {key.name} ({key.fingerprint}): the private key above is not stored; keep it safe")


@app.command("import")
def import_(
    ctx: typer.Context,
    name: NewName,
    public_key_file: Annotated[
        Path,
        typer.Argument(metavar="PUBLIC_KEY_FILE", help="OpenSSH public key file, e.g. ~/.ssh/id_ed25519.pub."),
    ],
    json_out: JsonOut = False,
) -> None:
    """Import an existing public key."""
    try:
        text = public_key_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{public_key_file}: {getattr(exc, 'strerror', None) or exc}") from None
    data = client_from(ctx).post("/v1/keypairs", body(KeypairCreate, name=name, public_key=text))
    key = parse(Keypair, data)
    emit(data, json_out, lambda: _render(key))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List keypairs."""
    data = client_from(ctx).get("/v1/keypairs")
    keys = parse_list(Keypair, data)
    emit(
        data,
        json_out,
        lambda: table(["NAME", "FINGERPRINT", "CREATED"], [(k.name, k.fingerprint, k.created_at) for k in keys]),
    )


@app.command()
def show(ctx: typer.Context, name: KeyName, json_out: JsonOut = False) -> None:
    """Show a keypair's public key and fingerprint."""
    data = client_from(ctx).get(f"/v1/keypairs/{seg(name)}")
    key = parse(Keypair, data)
    emit(data, json_out, lambda: _render(key))


@app.command()
def delete(ctx: typer.Context, name: KeyName, json_out: JsonOut = False) -> None:
    """Delete a keypair (VMs made with it keep their copy of the key)."""
    client_from(ctx).delete(f"/v1/keypairs/{seg(name)}")
    deleted("keypair", name, json_out)
