"""Events: the audit trail of who did what to which object."""

from __future__ import annotations

from typing import Annotated

import typer

from bramble.api.schemas import Event
from bramble.cli.client import client_from, parse_list
from bramble.cli.output import JsonOut, emit, parse_since, state, table

app = typer.Typer(help="Read the audit trail.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Option(help="Only this object, e.g. vm/web1.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time or an age: 10m, 2h, 1d.", metavar="WHEN")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. vm.start or vm.*.")] = None,
    limit: Annotated[int | None, typer.Option(help="The newest N (server default 100).", min=1)] = None,
    json_out: JsonOut = False,
) -> None:
    """List events, newest last."""
    params: dict[str, str | int] = {}
    if target:
        params["target"] = target
    if since:
        params["since"] = parse_since(since)
    if action:
        params["action"] = action
    if limit:
        params["limit"] = limit
    data = client_from(ctx).get("/v1/events", params)
    events = parse_list(Event, data)
    rows = [(e.time, e.actor, e.action, e.target, state(e.outcome), e.message) for e in events]
    emit(data, json_out, lambda: table(["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "MESSAGE"], rows))
