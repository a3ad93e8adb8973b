"""Storage pools: where images, VM disks and volumes are stored.

The ``default`` pool mirrors the ``[storage]`` section of the configuration and is
written at every daemon start, so a configuration from before pools keeps working.
More pools are created through the API; each is proven usable first (a connection with
its own settings, within its own timeout), so a wrong key, a missing Ceph pool or an
unreachable cluster is a 4xx/503 and no row is written. A pool goes only when nothing
lives in it any more.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bramble.audit import store as audit
from bramble.config import Settings
from bramble.core.context import SYSTEM, RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid, Unavailable
from bramble.core.operations import OperationHandle
from bramble.db.models import ImageRow, StoragePoolRow, VmRow, VolumeRow, utcnow
from bramble.storage.driver import PoolUsage, StorageDriver, StorageError, StorageUnavailable
from bramble.storage.pools import DEFAULT_POOL, POOL_DRIVERS, PoolSpec

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CEPH_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CEPH_USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TIMEOUT = 3600


@dataclass(frozen=True)
class PoolRequest:
    name: str
    driver: str
    path: str | None = None
    ceph_conf: str | None = None
    ceph_pool: str | None = None
    ceph_user: str | None = None
    ceph_keyring: str | None = None
    timeout_seconds: int = 15
    cache: str = "off"  # rbd: new VMs on the node cache tier by default
    precache_gib: float = 0.0


@dataclass(frozen=True)
class PoolReport:
    """``pool show``: the pool, its figures (or why there are none) and what lives in it."""

    row: StoragePoolRow
    usage: PoolUsage | None
    usage_error: str | None
    images: list[str]
    vms: list[str]
    volumes: list[str]


def default_pool_spec(settings: Settings) -> PoolSpec:
    """The ``default`` pool as the ``[storage]`` section describes it."""
    storage = settings.storage
    if storage.driver != "rbd":
        return PoolSpec(name=DEFAULT_POOL, driver=storage.driver)
    return PoolSpec(
        name=DEFAULT_POOL,
        driver="rbd",
        ceph_conf=str(storage.ceph_conf),
        ceph_pool=storage.ceph_pool,
        ceph_user=storage.ceph_user,
        ceph_keyring=str(storage.ceph_keyring) if storage.ceph_keyring else None,
        timeout_seconds=storage.ceph_timeout_seconds,
        cache=storage.cache,
        precache_gib=storage.precache_gib,
    )


def pool_spec(row: StoragePoolRow) -> PoolSpec:
    return PoolSpec(
        name=row.name,
        driver=row.driver,
        path=row.path,
        ceph_conf=row.ceph_conf,
        ceph_pool=row.ceph_pool,
        ceph_user=row.ceph_user,
        ceph_keyring=row.ceph_keyring,
        timeout_seconds=row.timeout_seconds,
        cache=row.cache,
        precache_gib=row.precache_gib,
    )


def pool_summary(row: StoragePoolRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "driver": row.driver,
        "path": row.path,
        "ceph_conf": row.ceph_conf,
        "ceph_pool": row.ceph_pool,
        "ceph_user": row.ceph_user,
        "ceph_keyring": row.ceph_keyring,
        "timeout_seconds": row.timeout_seconds,
        "is_default": row.is_default,
        "cache": row.cache,
        "precache_gib": row.precache_gib,
    }


async def resolve_pool(session: AsyncSession, name: str | None) -> StoragePoolRow:
    """The pool a request names, or the default pool; an unknown name is the caller's mistake (422)."""
    if name is None:
        row = (await session.scalars(select(StoragePoolRow).where(StoragePoolRow.is_default))).first()
        if row is None:
            row = (await session.scalars(select(StoragePoolRow).where(StoragePoolRow.name == DEFAULT_POOL))).first()
        if row is None:
            raise Conflict("this cloud has no default storage pool yet (the daemon writes it at start)")
        return row
    row = (
        await session.scalars(select(StoragePoolRow).where(or_(StoragePoolRow.name == name, StoragePoolRow.id == name)))
    ).first()
    if row is None:
        raise Invalid(f"unknown pool {name!r}; see `bramble pool list`")
    return row


async def pool_specs(session: AsyncSession) -> dict[str | None, PoolSpec]:
    """Every pool's spec by name; ``None`` maps to the default pool (rows from before pools)."""
    rows = list((await session.scalars(select(StoragePoolRow))).all())
    specs: dict[str | None, PoolSpec] = {row.name: pool_spec(row) for row in rows}
    default = next((row for row in rows if row.is_default), None)
    if default is not None:
        specs[None] = specs[default.name]
    return specs


def storage_for(deps: CoreDeps, spec: PoolSpec) -> StorageDriver:
    """The driver of a pool in this process (the API's side of images and volumes)."""
    if deps.storage_pools is None:
        return deps.image_store
    try:
        return deps.storage_pools.driver(spec)
    except StorageError as exc:
        raise Invalid(f"pool {spec.name!r}: {exc}") from None


async def pool_of(deps: CoreDeps, name: str | None) -> tuple[PoolSpec, StorageDriver]:
    """Spec and driver of the pool a row names (``None``: rows from before pools: the default)."""
    async with deps.db.read() as session:
        row = await resolve_pool(session, name)
    spec = pool_spec(row)
    return spec, storage_for(deps, spec)


async def spec_of(deps: CoreDeps, name: str | None) -> PoolSpec:
    """The spec of the pool a row names (``None``: the default pool)."""
    async with deps.db.read() as session:
        return pool_spec(await resolve_pool(session, name))


def storage_failure(exc: StorageError, what: str | None = None) -> Invalid | Unavailable:
    """A refusal the user can fix is a 422; a cluster that does not answer is a 503."""
    message = f"{what}: {exc}" if what else str(exc)
    return Unavailable(message) if isinstance(exc, StorageUnavailable) else Invalid(message)


class PoolService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    async def list_all(self) -> list[StoragePoolRow]:
        async with self.deps.db.read() as session:
            return list((await session.scalars(select(StoragePoolRow).order_by(StoragePoolRow.name))).all())

    async def get(self, ref: str) -> StoragePoolRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, StoragePoolRow, ref, "pool")

    async def ensure_default(self) -> StoragePoolRow:
        """Write the ``default`` pool from the configuration (at every start: the config may have changed)."""
        spec = default_pool_spec(self.deps.settings)
        async with self.deps.db.write() as session:
            await self.deps.db.serialize(session, "storage-pools")
            row = (await session.scalars(select(StoragePoolRow).where(StoragePoolRow.name == DEFAULT_POOL))).first()
            before = pool_summary(row) if row is not None else None
            if row is None:
                row = StoragePoolRow(id=str(uuid.uuid4()), name=DEFAULT_POOL, created_at=utcnow())
                session.add(row)
            row.driver, row.path = spec.driver, spec.path
            row.ceph_conf, row.ceph_pool, row.ceph_user = spec.ceph_conf, spec.ceph_pool, spec.ceph_user
            row.ceph_keyring, row.timeout_seconds = spec.ceph_keyring, spec.timeout_seconds
            row.cache, row.precache_gib = spec.cache, spec.precache_gib
            row.is_default = True
            for other in await session.scalars(select(StoragePoolRow).where(StoragePoolRow.is_default)):
                if other is not row:
                    other.is_default = False
            after = pool_summary(row)
            if before != after:  # first start, or [storage] was edited: say so in the audit log
                audit.record(
                    session,
                    actor=SYSTEM.actor,
                    action="pool.create" if before is None else "pool.update",
                    target=f"pool/{DEFAULT_POOL}",
                    message="the default pool, from the [storage] configuration",
                    before=before,
                    after=after,
                )
        return row

    # ------------------------------------------------------------------ create
    def _check(self, req: PoolRequest) -> PoolSpec:
        if not NAME_RE.match(req.name):
            raise Invalid(f"bad pool name {req.name!r}: lower-case letters, digits and '-', up to 63")
        if req.driver not in POOL_DRIVERS:
            raise Invalid(f"unknown driver {req.driver!r}; use one of {', '.join(POOL_DRIVERS)}")
        if req.driver == "fake" and self.deps.settings.storage.driver != "fake":
            raise Invalid("the fake driver keeps data in memory: only for clouds whose [storage] driver is fake")
        if not 1 <= req.timeout_seconds <= MAX_TIMEOUT:
            raise Invalid(f"timeout must be 1 to {MAX_TIMEOUT} seconds, got {req.timeout_seconds}")
        ceph = {"ceph_conf": req.ceph_conf, "ceph_pool": req.ceph_pool, "ceph_user": req.ceph_user}
        ceph["ceph_keyring"] = req.ceph_keyring
        if req.driver != "rbd":
            given = [key.replace("_", "-") for key, value in ceph.items() if value is not None]
            if given:
                raise Invalid(f"--{', --'.join(given)} apply to rbd pools only, not {req.driver}")
        if req.driver != "local" and req.path is not None:
            raise Invalid(f"--path applies to local pools only, not {req.driver}")
        if req.cache not in ("off", "on"):
            raise Invalid(f"--cache must be on or off, got {req.cache!r}")
        if req.driver != "rbd" and (req.cache == "on" or req.precache_gib):
            raise Invalid(
                f"--cache and --precache-gib apply to rbd pools only (the cache tier fronts RBD), not {req.driver}"
            )
        if not 0 <= req.precache_gib <= 65536:
            raise Invalid(f"--precache-gib must be 0 to 65536, got {req.precache_gib:g}")
        for key, value in (("path", req.path), ("ceph-conf", req.ceph_conf), ("keyring", req.ceph_keyring)):
            if value is not None and (not PurePosixPath(value).is_absolute() or "\n" in value):
                raise Invalid(f"--{key} must be an absolute path on the nodes, got {value!r}")
        if req.driver == "rbd":
            if req.ceph_conf is None or req.ceph_pool is None:
                raise Invalid("an rbd pool needs --ceph-conf and --ceph-pool")
            if not CEPH_NAME_RE.match(req.ceph_pool):
                raise Invalid(f"bad Ceph pool name {req.ceph_pool!r}")
            if req.ceph_user is not None and (
                not CEPH_USER_RE.match(req.ceph_user) or req.ceph_user.startswith("client.")
            ):
                raise Invalid(f"bad Ceph user {req.ceph_user!r}: give the id without 'client.'")
        return PoolSpec(
            name=req.name,
            driver=req.driver,
            path=req.path,
            ceph_conf=req.ceph_conf,
            ceph_pool=req.ceph_pool,
            ceph_user=(req.ceph_user or "bramble") if req.driver == "rbd" else None,
            ceph_keyring=req.ceph_keyring,
            timeout_seconds=req.timeout_seconds,
            cache=req.cache,
            precache_gib=req.precache_gib,
        )

    async def _refuse_duplicate(self, session: AsyncSession, spec: PoolSpec) -> None:
        if await session.scalar(select(StoragePoolRow.id).where(StoragePoolRow.name == spec.name)):
            raise Conflict(f"pool {spec.name!r} already exists")
        for other in await session.scalars(select(StoragePoolRow).where(StoragePoolRow.driver == spec.driver)):
            # Two Bramble pools over the same storage would count and sweep each other's data.
            if spec.driver == "rbd" and (other.ceph_conf, other.ceph_pool) == (spec.ceph_conf, spec.ceph_pool):
                raise Conflict(f"Ceph pool {spec.ceph_pool!r} of {spec.ceph_conf} is already pool {other.name!r}")
            if spec.driver == "local" and spec.path is not None and other.path == spec.path:
                raise Conflict(f"{spec.path} is already pool {other.name!r}")

    async def create(self, ctx: RequestContext, req: PoolRequest) -> StoragePoolRow:
        target = f"pool/{req.name}"
        async with self.deps.runner.validating(ctx, "pool.create", target):
            spec = self._check(req)
            async with self.deps.db.read() as session:
                await self._refuse_duplicate(session, spec)
            if self.deps.storage_pools is None:
                raise Invalid("this daemon has a single storage driver; it cannot add pools")
            try:
                await self.deps.storage_pools.probe(spec)
            except StorageError as exc:
                raise storage_failure(exc, f"pool {spec.name!r} is not usable") from None
        row = StoragePoolRow(
            id=str(uuid.uuid4()),
            name=spec.name,
            driver=spec.driver,
            path=spec.path,
            ceph_conf=spec.ceph_conf,
            ceph_pool=spec.ceph_pool,
            ceph_user=spec.ceph_user,
            ceph_keyring=spec.ceph_keyring,
            timeout_seconds=spec.timeout_seconds,
            cache=spec.cache,
            precache_gib=spec.precache_gib,
            is_default=False,
            created_at=utcnow(),
        )

        async def work(op: OperationHandle) -> dict[str, Any]:
            try:
                async with self.deps.db.write() as session:
                    await self.deps.db.serialize(session, "storage-pools")
                    await self._refuse_duplicate(session, spec)
                    session.add(row)
            except IntegrityError:
                raise Conflict(f"pool {spec.name!r} already exists") from None
            op.after = pool_summary(row)
            return {"pool_id": row.id}

        await self.deps.runner.run(ctx, "pool.create", target, work)
        return row

    # ------------------------------------------------------------------ delete
    async def users(self, session: AsyncSession, row: StoragePoolRow) -> tuple[list[str], list[str], list[str]]:
        """Names of the images, VMs (disks) and volumes in the pool (rows from before pools: default)."""

        def in_pool(column: Any) -> Any:
            return or_(column == row.name, column.is_(None)) if row.is_default else column == row.name

        images = list((await session.scalars(select(ImageRow.name).where(in_pool(ImageRow.pool)))).all())
        vms = list((await session.scalars(select(VmRow.name).where(in_pool(VmRow.pool)))).all())
        volumes = list((await session.scalars(select(VolumeRow.name).where(in_pool(VolumeRow.pool)))).all())
        return sorted(images), sorted(vms), sorted(volumes)

    @staticmethod
    def _in_use(name: str, images: list[str], vms: list[str], volumes: list[str]) -> str | None:
        parts = [
            f"{kind} {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
            for kind, names in (("images", images), ("VM disks", vms), ("volumes", volumes))
            if names
        ]
        return f"pool {name!r} still holds {'; '.join(parts)}; delete or move them first" if parts else None

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        async with self.deps.runner.validating(ctx, "pool.delete", f"pool/{ref}"):
            row = await self.get(ref)
            if row.is_default:
                raise Conflict(f"pool {row.name!r} is the default pool (the [storage] configuration); it stays")
            async with self.deps.db.read() as session:
                in_use = self._in_use(row.name, *await self.users(session, row))
            if in_use:
                raise Conflict(in_use)

        async def work(op: OperationHandle) -> None:
            op.before = pool_summary(row)
            async with self.deps.db.write() as session:
                # checked again in the deleting transaction: an image may have arrived meanwhile
                await self.deps.db.serialize(session, "storage-pools")
                current = await session.get(StoragePoolRow, row.id)
                if current is None:
                    return
                in_use = self._in_use(current.name, *await self.users(session, current))
                if in_use:
                    raise Conflict(in_use)
                await session.delete(current)
            if self.deps.storage_pools is not None:
                await self.deps.storage_pools.forget(pool_spec(row))

        await self.deps.runner.run(ctx, "pool.delete", f"pool/{row.name}", work)

    # ------------------------------------------------------------------ show
    async def show(self, ref: str) -> PoolReport:
        row = await self.get(ref)
        async with self.deps.db.read() as session:
            images, vms, volumes = await self.users(session, row)
        usage, error = None, None
        try:
            usage = await storage_for(self.deps, pool_spec(row)).usage()
        except StorageError as exc:
            error = str(exc)
        except NotImplementedError as exc:
            error = str(exc)
        except Invalid as exc:
            error = exc.message
        return PoolReport(row, usage, error, images, vms, volumes)


def check_same_pool(image: ImageRow, image_pool: PoolSpec, disk_pool: PoolSpec) -> None:
    """A VM disk is a copy-on-write clone of its image: RBD clones cannot leave the image's Ceph pool.

    Local qcow2 overlays may live in another local pool (the backing file is a path).
    """
    if image_pool.name == disk_pool.name:
        return
    if "rbd" in (image_pool.driver, disk_pool.driver) or image_pool.driver != disk_pool.driver:
        raise Invalid(
            f"image {image.name!r} is in pool {image_pool.name!r} ({image_pool.driver}); a VM disk cloned from it"
            f" must be in that pool too, not in {disk_pool.name!r} ({disk_pool.driver}): copy-on-write clones"
            " cannot cross pools"
        )
