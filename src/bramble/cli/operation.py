"""Operations: the server's record of a long action, and following one to its end.

`accepted` is the one place every 202 reply goes through, so --no-wait, polling, progress
and failure reporting behave the same for VMs and images.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bramble.api.schemas import Accepted, Operation
from bramble.cli.client import Client, CliError, client_from, parse, seg
from bramble.cli.output import JsonOut, emit, panel, print_json, state, stderr

app = typer.Typer(help="Inspect long-running actions.", no_args_is_help=True)

POLL_SECONDS = 0.3
DONE = ("succeeded", "failed")


def _label(op: Operation) -> str:
    return f"{op.action} {op.target}" + (f": {op.message}" if op.message else "")


def wait(client: Client, op: Operation) -> Operation:
    """Poll until the operation ends; a failed one becomes a CliError with the server's reason."""
    console = stderr()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    try:
        with progress:
            task = progress.add_task(_label(op), total=100)
            progress.update(task, completed=op.progress)
            while op.status not in DONE:
                time.sleep(POLL_SECONDS)
                op = parse(Operation, client.get(f"/v1/operations/{seg(op.id)}"))
                progress.update(task, description=_label(op), completed=op.progress)
    except KeyboardInterrupt:
        typer.echo(f"stopped waiting; operation {op.id} goes on (bramble operation show {op.id})", err=True)
        raise typer.Exit(130) from None
    if op.status == "failed":
        raise CliError(f"{op.action} {op.target} failed: {op.error or op.message or 'no reason given'}")
    return op


def accepted(client: Client, data: Any, *, no_wait: bool, json_out: bool) -> Accepted | None:
    """Handle a 202 reply: report it and return None for --no-wait, else wait and return it."""
    reply = parse(Accepted, data)
    if no_wait:
        if json_out:
            print_json(data)
        else:
            op = reply.operation
            typer.echo(f"operation {op.id} accepted: {op.action} {op.target}")
            typer.echo(f"follow it with: bramble operation show {op.id}")
        return None
    reply.operation = wait(client, reply.operation)
    return reply


@app.command("show")
def show(
    ctx: typer.Context,
    op_id: Annotated[str, typer.Argument(metavar="ID", help="Operation id.")],
    json_out: JsonOut = False,
) -> None:
    """Show an operation's status, progress and outcome."""
    data = client_from(ctx).get(f"/v1/operations/{seg(op_id)}")
    op = parse(Operation, data)
    emit(data, json_out, lambda: _render(op))


def _render(op: Operation) -> None:
    panel(
        f"operation {op.id}",
        [
            ("action", op.action),
            ("target", op.target),
            ("status", state(op.status)),
            ("progress", f"{op.progress:.0f}%"),
            ("message", op.message),
            ("error", op.error),
            ("actor", op.actor),
            ("request", op.request_id),
            ("created", op.created_at),
            ("finished", op.finished_at),
            ("result", None if op.result is None else json.dumps(op.result)),
        ],
    )
