"""Rendering and value parsing shared by every noun, so all commands look and fail alike.

Machine output (``--json``) and tables go to stdout; progress, prompts and errors go to
stderr, which keeps ``--json`` output pipeable even while a progress bar is drawn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bramble.cli.client import CliError

JsonOut = Annotated[bool, typer.Option("--json", help="Print the API response as JSON and nothing else on stdout.")]

Cell = str | int | float | datetime | Text | None

STATE_STYLES = {
    "running": "green",
    "active": "green",
    "up": "green",
    "succeeded": "green",
    "ok": "green",
    "stopped": "dim",
    "paused": "yellow",
    "queued": "yellow",
    "pending": "yellow",
    "creating": "cyan",
    "importing": "cyan",
    "deleting": "cyan",
    "error": "red",
    "failed": "red",
    "down": "red",
}


def stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 10_000  # piped output: never wrap a row, so grep/awk see whole lines
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str) -> NoReturn:
    """Report one error line on stderr and exit 2: scripts can rely on both."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(2)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def emit(data: Any, json_out: bool, render: Callable[[], None]) -> None:
    """--json prints the reply exactly as received (new server fields included); else draw it."""
    if json_out:
        print_json(data)
    else:
        render()


def deleted(kind: str, name: str, json_out: bool) -> None:
    """Confirm a 204 delete; JSON mode still prints an object so scripts can parse every reply."""
    if json_out:
        print_json({"deleted": f"{kind}/{name}"})
    else:
        typer.echo(f"{kind} {name} deleted")


def cell(value: Cell) -> Text:
    """Plain Text, never markup: names and messages come from users and may contain '['."""
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, Text):
        return value
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return Text(aware.astimezone().strftime("%Y-%m-%d %H:%M:%S"))
    return Text(str(value))


def state(value: str | None, reason: str | None = None) -> Text:
    text = cell(value)
    if value:
        text.stylize(STATE_STYLES.get(value, ""))
    if reason:
        text.append(f" ({reason})", style="dim")
    return text


def table(columns: Sequence[str], rows: Iterable[Sequence[Cell]]) -> None:
    grid = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(cell(value) for value in row))
    stdout().print(grid)


def panel(title: str, pairs: Sequence[tuple[str, Cell]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in pairs:
        grid.add_row(key, cell(value))
    stdout().print(Panel(grid, title=Text(title), title_align="left", expand=False))


# ---------------------------------------------------------------- sizes
KIB = 1024
MIB = KIB**2
GIB = KIB**3
TIB = KIB**4
_UNITS = {
    "b": 1,
    **{f"k{tail}": KIB for tail in ("", "b", "ib")},
    **{f"m{tail}": MIB for tail in ("", "b", "ib")},
    **{f"g{tail}": GIB for tail in ("", "b", "ib")},
    **{f"t{tail}": TIB for tail in ("", "b", "ib")},
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")


def parse_size(text: str, unit: int, what: str) -> int:
    """A size as a whole number of ``unit`` bytes; bare numbers count in ``unit``.

    Every suffix is binary (1G = 1024M), as QEMU reads them.
    """
    unit_name = format_size(unit).lstrip("1")
    match = _SIZE.fullmatch(text.strip())
    if not match or match[2].lower() not in ("", *_UNITS):
        raise CliError(f"invalid {what} {text!r}: use a number with an optional unit, e.g. 512M, 2G, 1GiB")
    factor = _UNITS[match[2].lower()] if match[2] else unit
    total = Fraction(match[1]) * factor
    if total % unit:
        raise CliError(f"invalid {what} {text!r}: not a whole number of {unit_name}")
    if total < unit:
        raise CliError(f"invalid {what} {text!r}: must be at least 1 {unit_name}")
    return int(total // unit)


def parse_memory(text: str) -> int:
    """Memory in MiB (bare numbers are MiB)."""
    return parse_size(text, MIB, "memory size")


def parse_disk(text: str) -> int:
    """Disk in GiB (bare numbers are GiB)."""
    return parse_size(text, GIB, "disk size")


def format_size(n_bytes: int) -> str:
    """Exact, in the largest unit that divides evenly: what `parse_size` reads back."""
    for name, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n_bytes and n_bytes % factor == 0:
            return f"{n_bytes // factor}{name}"
    return f"{n_bytes}B"


def human_bytes(n_bytes: int | None) -> str | None:
    """Approximate, for sizes nobody types back in (image files)."""
    if n_bytes is None:
        return None
    value = float(n_bytes)
    for name in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {name}" if name == "B" else f"{value:.1f} {name}"
        value /= 1024
    return f"{value:.1f} TiB"


# ---------------------------------------------------------------- times
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> str:
    """ISO 8601 (naive means local time) or a relative age like 10m, 2h, 1d; returns ISO 8601."""
    match = _RELATIVE.fullmatch(text.strip().lower())
    if match:
        age = timedelta(seconds=int(match[1]) * _SECONDS[match[2]])
        return ((now or datetime.now(UTC)) - age).isoformat()
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"invalid time {text!r}: use ISO 8601 (2024-05-01T12:00) or an age like 10m, 2h, 1d") from None
    return (when if when.tzinfo else when.astimezone()).isoformat()
