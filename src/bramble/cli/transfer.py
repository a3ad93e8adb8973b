"""Raw downloads with a progress bar, shared by `volume export` and `image export`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from bramble.cli.client import Client, CliError
from bramble.cli.output import stderr


def progress() -> Progress:
    """A bar with bytes, speed and time left on stderr; silent when stderr is not a terminal."""
    console = stderr()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, disable=not console.is_terminal)


def download_to(client: Client, path: str, target: str, label: str, *, params: Mapping[str, str] | None = None) -> None:
    """GET ``path`` into the file ``target`` (or stdout for ``-``).

    The file appears only when complete: it is written beside the target under a hidden
    partial name and renamed at the end, so a cut download leaves nothing half-written.
    """
    if target == "-":
        out = sys.stdout.buffer
        client.download(path, out.write, params=params)
        out.flush()
        return
    file = Path(target)
    partial = file.with_name(f".{file.name}.partial")
    try:
        with progress() as bar, partial.open("wb") as out_file:
            task = bar.add_task(label, total=None)

            def write(chunk: bytes) -> None:
                out_file.write(chunk)
                bar.advance(task, len(chunk))

            client.download(path, write, params=params, on_total=lambda total: bar.update(task, total=total))
        partial.replace(file)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
