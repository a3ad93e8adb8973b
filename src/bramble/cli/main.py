"""The `bramble` Typer app: global options, the noun sub-apps, and one place that turns failures
into a single ``error:`` line with exit code 2 instead of a traceback."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from bramble.api.schemas import HealthInfo
from bramble.cli import (
    event,
    fip,
    flavor,
    image,
    keypair,
    machine,
    net,
    node,
    operation,
    pool,
    profile,
    secgroup,
    vm,
    volume,
)
from bramble.cli.client import CliError, client_from, parse
from bramble.cli.output import JsonOut, emit, fail


class _Group(TyperGroup):
    """Root group whose invoke wraps every subcommand, so errors are handled once, here.

    Handling it here rather than in main() means CliRunner tests see the same exit codes.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort):
            raise
        except CliError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise  # Typer's main quiets a closed pipe (`bramble event list | head`)
        except Exception as exc:
            if os.environ.get("BRAMBLE_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (set BRAMBLE_DEBUG=1 for a traceback)")


app = typer.Typer(
    name="bramble",
    cls=_Group,
    help="Command line for the Bramble private cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(image.app, name="image")
app.add_typer(flavor.app, name="flavor")
app.add_typer(vm.app, name="vm")
app.add_typer(volume.app, name="volume")
app.add_typer(pool.app, name="pool")
app.add_typer(net.app, name="net")
app.add_typer(fip.app, name="fip")
app.add_typer(secgroup.app, name="secgroup")
app.add_typer(keypair.app, name="keypair")
app.add_typer(node.app, name="node")
app.add_typer(machine.app, name="machine")
app.add_typer(profile.app, name="profile")
app.add_typer(event.app, name="event")
app.add_typer(operation.app, name="operation")


@app.callback()
def _root(
    url: Annotated[
        str | None,
        typer.Option(help="API URL (else env BRAMBLE_URL, then `url` in cli.toml, then http://127.0.0.1:8470)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="API token (else env BRAMBLE_TOKEN, then `token` in cli.toml)."),
    ] = None,
) -> None:
    """Command line for the Bramble private cloud.

    Settings file: $XDG_CONFIG_HOME/bramble/cli.toml (default ~/.config/bramble/cli.toml).
    """
    # The values are read lazily from the root context by client_from(), so that --help and
    # shell completion work without a token.


@app.command()
def health(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """Check that the API answers (needs no token)."""
    client = client_from(ctx)
    data = client.request("GET", "/v1/health", auth=False)
    info = parse(HealthInfo, data)
    emit(data, json_out, lambda: typer.echo(f"{client.config.url}: {info.status} (brambled {info.version})"))


def main() -> None:
    """Console-script entry point (``bramble``)."""
    app(prog_name="bramble")
