"""Images: uploaded in parts (disk, kernel, initrd) or downloaded from a URL by the server."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bramble.compute.arch import UnknownArch, canonical_arch
from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid
from bramble.core.operations import OperationHandle
from bramble.core.pools import pool_of, resolve_pool, storage_failure
from bramble.core.vm_snapshots import VmDiskService
from bramble.db.models import ImageRow, OperationRow, VmRow, utcnow
from bramble.storage.driver import StorageDriver, StorageError, StoredImage

IMAGE_PARTS = ("disk", "kernel", "initrd")
DOWNLOAD_CHUNK = 1024 * 1024


def image_summary(row: ImageRow) -> dict[str, object]:
    return {
        "name": row.name,
        "arch": row.arch,
        "status": row.status,
        "format": row.format,
        "virtual_size_bytes": row.virtual_size_bytes,
        "pool": row.pool,
    }


def stored_image(row: ImageRow) -> StoredImage:
    if row.path is None or row.format is None:
        raise Invalid(f"image {row.name!r} is not active (status {row.status})")
    return StoredImage(
        image_id=row.id,
        path=row.path,
        format=row.format,
        size_bytes=row.size_bytes or 0,
        virtual_size_bytes=row.virtual_size_bytes or 0,
        kernel_path=row.kernel_path,
        initrd_path=row.initrd_path,
    )


class ImageService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps
        self.store = deps.image_store

    async def list_all(self) -> list[ImageRow]:
        async with self.deps.db.read() as session:
            return list((await session.scalars(select(ImageRow).order_by(ImageRow.name))).all())

    async def get(self, ref: str) -> ImageRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, ImageRow, ref, "image")

    async def create(
        self,
        ctx: RequestContext,
        *,
        name: str,
        arch: str,
        cmdline: str | None = None,
        source_url: str | None = None,
        kernel_url: str | None = None,
        initrd_url: str | None = None,
        pool: str | None = None,
    ) -> tuple[ImageRow, OperationRow | None]:
        """Register an image. With URLs the server fetches the parts in an operation."""
        target = f"image/{name}"
        async with self.deps.runner.validating(ctx, "image.create", target):
            try:
                arch = canonical_arch(arch)
            except UnknownArch as exc:
                raise Invalid(str(exc)) from None
            urls = {"disk": source_url, "kernel": kernel_url, "initrd": initrd_url}
            for part, url in urls.items():
                if url is not None and not url.startswith(("http://", "https://")):
                    raise Invalid(f"{part} URL must start with http:// or https://, got {url!r}")
            if source_url is None and (kernel_url or initrd_url):
                raise Invalid("kernel and initrd URLs need a disk URL too (source_url)")
            row = ImageRow(
                id=str(uuid.uuid4()),
                name=name,
                arch=arch,
                status="queued",
                cmdline=cmdline,
                created_at=utcnow(),
            )
            try:
                async with self.deps.db.write() as session:
                    if await session.scalar(select(ImageRow.id).where(ImageRow.name == name)):
                        raise Conflict(f"image {name!r} already exists")
                    # in the inserting transaction: a pool being deleted cannot miss the new image
                    row.pool = (await resolve_pool(session, pool)).name
                    session.add(row)
            except IntegrityError:
                raise Conflict(f"image {name!r} already exists") from None
        if source_url is None:
            return row, None

        async def work(op: OperationHandle) -> dict[str, object]:
            op.undo.push("remove the image row", lambda: self._remove(row.id))
            store = await self._store(row)
            op.undo.push("remove stored parts", lambda: store.delete_image(row.id))
            await self._set_status(row.id, "importing")
            wanted = [(part, url) for part, url in urls.items() if url]
            for index, (part, url) in enumerate(wanted):
                await self._download(op, store, row.id, part, url, index, len(wanted))
            active = await self._activate(row.id)
            op.after = image_summary(active)
            return {"image_id": row.id}

        op_row = await self.deps.runner.submit(ctx, "image.import", target, work)
        return row, op_row

    async def _store(self, row: ImageRow) -> StorageDriver:
        """The driver of the image's pool."""
        return (await pool_of(self.deps, row.pool))[1]

    async def _download(
        self, op: OperationHandle, store: StorageDriver, image_id: str, part: str, url: str, index: int, count: int
    ) -> None:
        limit = self.deps.settings.storage.max_image_bytes
        try:
            async with (
                httpx.AsyncClient(follow_redirects=True, timeout=60) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise Invalid(f"download of {url} answered HTTP {response.status_code}")
                total = int(response.headers.get("content-length") or 0)
                received = 0
                last_report = 0.0

                async def chunks() -> AsyncIterator[bytes]:
                    nonlocal received, last_report
                    async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                        received += len(chunk)
                        if received > limit:
                            raise Invalid(f"{url} is larger than the limit of {limit} bytes")
                        now = time.monotonic()
                        if total and now - last_report > 0.5:
                            last_report = now
                            share = (index + received / total) / count
                            await op.progress(share * 100, f"downloading {part}: {received} bytes")
                        yield chunk

                await store.write_image(image_id, chunks(), part=part)
        except httpx.HTTPError as exc:
            raise Invalid(f"cannot download {url}: {exc}") from None

    async def upload(self, ctx: RequestContext, ref: str, part: str, chunks: AsyncIterator[bytes]) -> int:
        """Store one streamed part of a queued image."""
        async with self.deps.runner.validating(ctx, "image.upload", f"image/{ref}"):
            if part not in IMAGE_PARTS:
                raise Invalid(f"unknown image part {part!r}; use one of {', '.join(IMAGE_PARTS)}")
            row = await self.get(ref)
            if row.status != "queued":
                raise Conflict(f"image {row.name!r} is {row.status}; parts can only be uploaded before activate")
            limit = self.deps.settings.storage.max_image_bytes

            async def bounded() -> AsyncIterator[bytes]:
                received = 0
                async for chunk in chunks:
                    received += len(chunk)
                    if received > limit:
                        raise Invalid(f"the {part} is larger than the limit of {limit} bytes (storage.max_image_bytes)")
                    yield chunk

            try:
                return await (await self._store(row)).write_image(row.id, bounded(), part=part)
            except StorageError as exc:
                raise storage_failure(exc) from None

    async def activate(self, ctx: RequestContext, ref: str) -> ImageRow:
        async with self.deps.runner.validating(ctx, "image.import", f"image/{ref}"):
            row = await self.get(ref)
            if row.status != "queued":
                raise Conflict(f"image {row.name!r} is already {row.status}")

        async def work(op: OperationHandle) -> dict[str, object]:
            active = await self._activate(row.id)
            op.after = image_summary(active)
            return {"image_id": row.id}

        await self.deps.runner.run(ctx, "image.import", f"image/{row.name}", work)
        return await self.get(row.id)

    async def _activate(self, image_id: str) -> ImageRow:
        try:
            stored = await (await self._store(await self.get(image_id))).finalize_image(image_id)
        except StorageError as exc:
            raise Invalid(str(exc)) from None
        async with self.deps.db.write() as session:
            row = await session.get(ImageRow, image_id)
            assert row is not None
            row.status = "active"
            row.format = stored.format
            row.path = stored.path
            row.size_bytes = stored.size_bytes
            row.virtual_size_bytes = stored.virtual_size_bytes
            row.kernel_path = stored.kernel_path
            row.initrd_path = stored.initrd_path
            row.error = None
        return row

    async def delete(self, ctx: RequestContext, ref: str, *, flatten: bool = False) -> None:
        """Delete an image; with ``flatten`` the disks of the VMs cloned from it get their own data first."""
        disks = VmDiskService(self.deps)
        async with self.deps.runner.validating(ctx, "image.delete", f"image/{ref}"):
            row = await self.get(ref)
            async with self.deps.db.read() as session:
                users = list((await session.scalars(select(VmRow.name).where(VmRow.image_id == row.id))).all())
            if users and not flatten:
                raise Conflict(
                    f"image {row.name!r} is used by the disks of {len(users)} VM(s): {', '.join(sorted(users))}"
                    " (--flatten gives them their own copy first)"
                )
            if users and (row.kernel_path or row.format == "iso"):
                what = "an ISO" if row.format == "iso" else "a kernel"
                raise Conflict(
                    f"image {row.name!r} holds {what} that VM(s) {', '.join(sorted(users))} boot from;"
                    " flattening their disks cannot free it"
                )
            if users:
                await disks.check_flattenable(row.id)

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = image_summary(row)
            flattened = await disks.check_flattenable(row.id) if flatten else []
            # A failure here stops before anything is deleted; a disk flattened already stays correct.
            await disks.flatten_for_image(flattened)
            async with self.deps.db.write() as session:
                for vm in await session.scalars(select(VmRow).where(VmRow.image_id == row.id)):
                    if vm.id not in {done.id for done in flattened}:
                        raise Conflict(f"image {row.name!r} got a new VM meanwhile: {vm.name}")
                    vm.image_id = None  # its disk is its own now; the image row can go
                current = await session.get(ImageRow, row.id)
                if current is not None:
                    await session.delete(current)
            # Files go after the row: a failure leaves an orphan file, never a row without files.
            await (await self._store(row)).delete_image(row.id)
            return {"image_id": row.id, "flattened_vms": sorted(vm.name for vm in flattened)}

        await self.deps.runner.run(ctx, "image.delete", f"image/{row.name}", work)

    async def export(self, ctx: RequestContext, ref: str) -> tuple[int, AsyncIterator[bytes]]:
        """(size, raw byte stream) of an active image's disk; the first chunk is read before
        answering, so a missing image or an unreachable pool is a clean 4xx/503, not a cut stream."""
        async with self.deps.runner.validating(ctx, "image.export", f"image/{ref}"):
            row = await self.get(ref)
            if row.status != "active":
                raise Conflict(f"image {row.name!r} is {row.status}; only active images can be exported")
            store = await self._store(row)
            try:
                stream = store.export_image(row.id)
                first = await anext(stream, b"")
            except StorageError as exc:
                raise storage_failure(exc, f"exporting image {row.name!r}") from None
            except NotImplementedError as exc:
                raise Invalid(str(exc)) from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

        return row.virtual_size_bytes or 0, chunks()

    async def _set_status(self, image_id: str, status: str) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(ImageRow, image_id)
            if row is not None:
                row.status = status

    async def _remove(self, image_id: str) -> None:
        async with self.deps.db.write() as session:
            row = await session.get(ImageRow, image_id)
            if row is not None:
                await session.delete(row)
