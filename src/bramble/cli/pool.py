"""Storage pools: where images, VM disks and volumes live (local directories, Ceph RBD pools)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bramble.cli.client import CliError, client_from, name_completer, seg
from bramble.cli.output import JsonOut, deleted, emit, human_bytes, panel, table

app = typer.Typer(help="Storage pools: where images, VM disks and volumes are stored.", no_args_is_help=True)

PoolName = Annotated[
    str,
    typer.Argument(
        metavar="POOL", help="Pool name or id.", autocompletion=name_completer("/v1/pools"), show_default=False
    ),
]
DRIVERS = ("local", "rbd", "fake")


def _path(name: str) -> str:
    return f"/v1/pools/{seg(name)}"


def _where(pool: dict[str, Any]) -> str | None:
    if pool["driver"] == "rbd":
        return f"{pool['ceph_pool']} as client.{pool['ceph_user']} ({pool['ceph_conf']})"
    return pool.get("path") or ("state_dir" if pool["is_default"] else None)


def _percent(part: int | None, whole: int | None) -> str:
    return f" ({100 * part / whole:.1f}%)" if part is not None and whole else ""


def _cache(pool: dict[str, Any]) -> str:
    """The pool's cache-tier default for new VMs, with its pre-cache amount."""
    if pool.get("cache", "off") != "on":
        return "off"
    precache = pool.get("precache_gib") or 0
    return f"on, pre-cache {precache:g} GiB" if precache else "on"


def render(pool: dict[str, Any]) -> None:
    usage = pool.get("usage") or {}
    rows: list[tuple[str, Any]] = [
        ("id", pool["id"]),
        ("driver", pool["driver"]),
        ("default", "yes" if pool["is_default"] else "no"),
        ("where", _where(pool)),
        ("keyring", pool.get("ceph_keyring")),
        ("timeout", f"{pool['timeout_seconds']} s" if pool["driver"] == "rbd" else None),
        ("cache", _cache(pool) if pool["driver"] == "rbd" else None),
    ]
    if usage:
        used, capacity = usage["used_bytes"], usage.get("capacity_bytes")
        rows += [
            ("used", f"{human_bytes(used)}{_percent(used, capacity)}"),
            ("capacity", human_bytes(capacity) if capacity is not None else "unknown"),
            (
                "available",
                human_bytes(usage.get("available_bytes")) if usage.get("available_bytes") is not None else None,
            ),
            ("raw used", human_bytes(usage.get("raw_used_bytes"))),
            ("quota", human_bytes(usage.get("quota_bytes"))),
            ("figures from", usage["source"]),
        ]
    elif pool.get("usage_error"):
        rows.append(("usage", f"unavailable: {pool['usage_error']}"))
    for kind in ("images", "vms", "volumes"):
        names = pool.get(kind)
        if names is not None:
            label = {"vms": "VM disks"}.get(kind, kind)
            rows.append((label, f"{len(names)}" + (f": {', '.join(names[:8])}" if names else "")))
    rows.append(("created", pool["created_at"]))
    optional = {"keyring", "timeout", "cache", "available", "raw used", "quota"}  # shown only when they apply
    panel(f"pool {pool['name']}", [(key, value) for key, value in rows if value is not None or key not in optional])


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new pool.")],
    driver: Annotated[str, typer.Option("--driver", "-d", help="local or rbd.")],
    ceph_conf: Annotated[
        Path | None, typer.Option("--ceph-conf", help="rbd: ceph.conf on the nodes.", metavar="PATH")
    ] = None,
    ceph_pool: Annotated[str | None, typer.Option("--ceph-pool", help="rbd: the Ceph pool.", metavar="P")] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="rbd: Ceph client id without 'client.' (default bramble).", metavar="U")
    ] = None,
    keyring: Annotated[
        Path | None, typer.Option("--keyring", help="rbd: keyring file (default: the conf's).", metavar="K")
    ] = None,
    path: Annotated[
        Path | None, typer.Option("--path", help="local: directory (default: state_dir/pools/NAME).", metavar="DIR")
    ] = None,
    timeout: Annotated[
        int, typer.Option("--timeout", help="rbd: seconds before an unreachable cluster fails a request.", min=1)
    ] = 15,
    cache: Annotated[
        str | None,
        typer.Option("--cache", help="rbd: on: new VMs' disks on the node cache tier by default.", metavar="on|off"),
    ] = None,
    precache_gib: Annotated[
        float | None,
        typer.Option("--precache-gib", help="rbd: GiB of the image read into the cache when a VM starts.", min=0),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Create a pool; the server connects with these settings first and refuses what does not work."""
    if driver not in DRIVERS:
        raise CliError(f"--driver must be local or rbd, got {driver!r}")
    request: dict[str, Any] = {"name": name, "driver": driver, "timeout_seconds": timeout}
    # paths are the nodes' paths: made absolute here (as the shell meant them), not checked locally
    for key, value in (("ceph_conf", ceph_conf), ("ceph_keyring", keyring), ("path", path)):
        if value is not None:
            request[key] = str(value.absolute())
    for key, text in (("ceph_pool", ceph_pool), ("ceph_user", user)):
        if text is not None:
            request[key] = text
    if cache is not None:
        if cache not in ("on", "off"):
            raise CliError(f"--cache must be on or off, got {cache!r}")
        request["cache"] = cache
    if precache_gib is not None:
        request["precache_gib"] = precache_gib
    data = client_from(ctx).post("/v1/pools", request, slow=True)
    emit(data, json_out, lambda: render(data))


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List pools."""
    data = client_from(ctx).get("/v1/pools")
    emit(
        data,
        json_out,
        lambda: table(
            ["NAME", "DRIVER", "DEFAULT", "WHERE", "CREATED"],
            [(p["name"], p["driver"], "yes" if p["is_default"] else "", _where(p), p["created_at"]) for p in data],
        ),
    )


@app.command()
def show(ctx: typer.Context, name: PoolName, json_out: JsonOut = False) -> None:
    """Show a pool with its capacity, usage and what lives in it."""
    data = client_from(ctx).get(_path(name))
    emit(data, json_out, lambda: render(data))


@app.command()
def delete(ctx: typer.Context, name: PoolName, json_out: JsonOut = False) -> None:
    """Delete an empty pool (the default pool stays); its data on Ceph or disk is not touched."""
    client_from(ctx).delete(_path(name))
    deleted("pool", name, json_out)
