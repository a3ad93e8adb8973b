"""Local storage: images and qcow2 disks in the state directory.

A VM disk is a qcow2 file whose backing file is the image, so creating one is
instant whatever the image size and the image is never written to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from bramble.storage.driver import (
    DiskSnapshot,
    PoolUsage,
    StorageDriver,
    StorageError,
    StoredDisk,
    StoredImage,
    detect_format,
    write_file_atomically,
)

PARTS = ("disk", "kernel", "initrd")
HEAD_BYTES = 64 * 1024
EXPORT_CHUNK = 1024 * 1024
SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as source:
        while chunk := await asyncio.to_thread(source.read, EXPORT_CHUNK):
            yield chunk


async def _run(*argv: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        raise StorageError(f"{argv[0]} is not installed") from None
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise StorageError(err.decode(errors="replace").strip() or f"{argv[0]} failed ({proc.returncode})")
    return out.decode()


class LocalStorage(StorageDriver):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images_dir = root / "images"
        self.disks_dir = root / "disks"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.disks_dir.mkdir(parents=True, exist_ok=True)

    def _image_dir(self, image_id: str) -> Path:
        if "/" in image_id or image_id in ("", ".", ".."):
            raise StorageError(f"bad image id {image_id!r}")
        return self.images_dir / image_id

    def _disk_path(self, disk_id: str) -> Path:
        if "/" in disk_id or disk_id in ("", ".", ".."):
            raise StorageError(f"bad disk id {disk_id!r}")
        return self.disks_dir / f"{disk_id}.qcow2"

    async def write_image(self, image_id: str, chunks: AsyncIterator[bytes], *, part: str = "disk") -> int:
        if part not in PARTS:
            raise StorageError(f"unknown image part {part!r}")
        folder = self._image_dir(image_id)
        folder.mkdir(exist_ok=True)
        return await write_file_atomically(folder / part, chunks)

    async def finalize_image(self, image_id: str) -> StoredImage:
        folder = self._image_dir(image_id)
        disk = folder / "disk"
        if not disk.exists():
            raise StorageError("the image has no disk part: upload one before activating")
        with open(disk, "rb") as f:
            fmt = detect_format(f.read(HEAD_BYTES))
        size = disk.stat().st_size
        virtual = size
        if fmt == "qcow2":
            try:
                info = json.loads(await _run("qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)))
            except StorageError as exc:
                raise StorageError(f"not a usable qcow2 image: {exc}") from None
            if info.get("backing-filename"):
                # A backing file in an uploaded image would let it read any file on the host.
                raise StorageError("qcow2 images with a backing file are refused")
            virtual = int(info["virtual-size"])
        kernel, initrd = folder / "kernel", folder / "initrd"
        if initrd.exists() and not kernel.exists():
            raise StorageError("an initrd was uploaded without a kernel")
        return StoredImage(
            image_id=image_id,
            path=str(disk),
            format=fmt,
            size_bytes=size,
            virtual_size_bytes=virtual,
            kernel_path=str(kernel) if kernel.exists() else None,
            initrd_path=str(initrd) if initrd.exists() else None,
        )

    async def delete_image(self, image_id: str) -> None:
        shutil.rmtree(self._image_dir(image_id), ignore_errors=True)

    async def image_exists(self, image_id: str) -> bool:
        return (self._image_dir(image_id) / "disk").exists()

    async def clone_disk(self, disk_id: str, image: StoredImage, size_bytes: int) -> StoredDisk:
        if image.format == "iso":
            return await self.create_blank_disk(disk_id, size_bytes)
        path = self._disk_path(disk_id)
        size = max(size_bytes, image.virtual_size_bytes)
        # -u: the image was checked at import; do not read it again for every clone.
        await _run(
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            image.format,
            "-b",
            image.path,
            "-u",
            str(path),
            str(size),
        )
        return StoredDisk(disk_id=disk_id, path=str(path), format="qcow2", virtual_size_bytes=size)

    async def create_blank_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        path = self._disk_path(disk_id)
        await _run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size_bytes))
        return StoredDisk(disk_id=disk_id, path=str(path), format="qcow2", virtual_size_bytes=size_bytes)

    async def delete_disk(self, disk_id: str) -> None:
        self._disk_path(disk_id).unlink(missing_ok=True)

    async def disk_exists(self, disk_id: str) -> bool:
        return self._disk_path(disk_id).exists()

    # ------------------------------------------------------------------ volumes
    def _existing(self, disk_id: str) -> Path:
        path = self._disk_path(disk_id)
        if not path.exists():
            raise StorageError(f"disk {disk_id} does not exist")
        return path

    async def _info(self, path: Path) -> dict[str, object]:
        info: dict[str, object] = json.loads(
            await _run("qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path))
        )
        return info

    async def disk_info(self, disk_id: str) -> StoredDisk:
        path = self._existing(disk_id)
        info = await self._info(path)
        size = info["virtual-size"]
        assert isinstance(size, int)
        return StoredDisk(disk_id=disk_id, path=str(path), format="qcow2", virtual_size_bytes=size)

    async def resize_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        """Grow the qcow2 file while no VM has it open (a running VM grows it with QMP block_resize)."""
        current = await self.disk_info(disk_id)
        if size_bytes < current.virtual_size_bytes:
            raise StorageError(
                f"disk {disk_id} is {current.virtual_size_bytes} bytes; shrinking it to {size_bytes} is refused"
            )
        if size_bytes > current.virtual_size_bytes:
            await _run("qemu-img", "resize", "-q", "-f", "qcow2", current.path, str(size_bytes))
        return StoredDisk(disk_id=disk_id, path=current.path, format="qcow2", virtual_size_bytes=size_bytes)

    async def flatten_disk(self, disk_id: str) -> None:
        """Drop the backing file: rebase onto nothing copies the shared data into the disk.

        Only the active layer gets the copy: an internal snapshot taken on the overlay would read
        zeros where it relied on the image, so a disk with snapshots is refused (a standalone
        disk has nothing to flatten).
        """
        path = self._existing(disk_id)
        info = await self._info(path)
        if not info.get("backing-filename"):
            return
        if info.get("snapshots"):
            names = ", ".join(str(s["name"]) for s in info["snapshots"])  # type: ignore[attr-defined]
            raise StorageError(
                f"disk {disk_id} has snapshots ({names}) that share data with its image; "
                "flattening would empty them: delete them first"
            )
        await _run("qemu-img", "rebase", "-q", "-f", "qcow2", "-b", "", str(path))

    @staticmethod
    def _snapshot_name(snapshot: str) -> str:
        if not SNAPSHOT_RE.match(snapshot):
            raise StorageError(f"bad snapshot name {snapshot!r}: letters, digits, '.', '_', '-' (up to 63)")
        return snapshot

    async def snapshot_list(self, disk_id: str) -> list[DiskSnapshot]:
        info = await self._info(self._existing(disk_id))
        size = info["virtual-size"]
        assert isinstance(size, int)
        result = []
        for snap in info.get("snapshots", []) or []:  # type: ignore[attr-defined]
            created = datetime.fromtimestamp(int(snap.get("date-sec", 0)), UTC) if snap.get("date-sec") else None
            result.append(DiskSnapshot(name=str(snap["name"]), size_bytes=size, protected=False, created=created))
        return result

    async def snapshot_create(self, disk_id: str, snapshot: str) -> DiskSnapshot:
        """An internal qcow2 snapshot; the disk must not be open in a running VM."""
        path = self._existing(disk_id)
        name = self._snapshot_name(snapshot)
        if any(s.name == name for s in await self.snapshot_list(disk_id)):
            raise StorageError(f"disk {disk_id} already has a snapshot {name!r}")
        await _run("qemu-img", "snapshot", "-q", "-c", name, str(path))
        return next(s for s in await self.snapshot_list(disk_id) if s.name == name)

    async def snapshot_rollback(self, disk_id: str, snapshot: str) -> None:
        path = self._existing(disk_id)
        if not any(s.name == snapshot for s in await self.snapshot_list(disk_id)):
            raise StorageError(f"disk {disk_id} has no snapshot {snapshot!r}")
        await _run("qemu-img", "snapshot", "-q", "-a", snapshot, str(path))

    async def snapshot_delete(self, disk_id: str, snapshot: str) -> None:
        """Delete a snapshot; deleting one that is not there is not an error."""
        path = self._existing(disk_id)
        if not any(s.name == snapshot for s in await self.snapshot_list(disk_id)):
            return
        await _run("qemu-img", "snapshot", "-q", "-d", snapshot, str(path))

    async def export_disk(self, disk_id: str, *, snapshot: str | None = None) -> AsyncIterator[bytes]:
        path = self._existing(disk_id)
        if snapshot is not None and not any(s.name == snapshot for s in await self.snapshot_list(disk_id)):
            raise StorageError(f"disk {disk_id} has no snapshot {snapshot!r}")
        temp = self.disks_dir / f".export-{disk_id}-{uuid.uuid4().hex[:8]}.raw"
        async for chunk in self._converted(path, "qcow2", temp, snapshot=snapshot):
            yield chunk

    async def export_image(self, image_id: str) -> AsyncIterator[bytes]:
        """Raw and ISO images are streamed as stored; a qcow2 is converted like a disk export."""
        disk = self._image_dir(image_id) / "disk"
        try:
            with open(disk, "rb") as f:
                fmt = detect_format(f.read(HEAD_BYTES))
        except FileNotFoundError:
            raise StorageError(f"image {image_id} has no disk part") from None
        if fmt != "qcow2":
            async for chunk in _read_chunks(disk):
                yield chunk
            return
        temp = self.images_dir / f".export-{image_id}-{uuid.uuid4().hex[:8]}.raw"
        async for chunk in self._converted(disk, "qcow2", temp):
            yield chunk

    @staticmethod
    async def _converted(source: Path, fmt: str, temp: Path, *, snapshot: str | None = None) -> AsyncIterator[bytes]:
        """Convert to a sparse raw temporary file, stream it, remove it.

        qemu-img cannot write raw to a pipe, and reading the qcow2 ourselves would mean
        parsing it; a sparse temporary costs only the allocated blocks.
        """
        argv = ["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw"]
        if snapshot is not None:
            argv += ["-l", f"snapshot.name={snapshot}"]
        try:
            await _run(*argv, str(source), str(temp))
            async for chunk in _read_chunks(temp):
                yield chunk
        finally:
            temp.unlink(missing_ok=True)

    async def usage(self) -> PoolUsage:
        """Free space of the file system under ``root`` and what Bramble's own files take of it."""

        def measure() -> PoolUsage:
            try:
                fs = os.statvfs(self.root)
            except OSError as exc:
                raise StorageError(f"cannot read {self.root}: {exc.strerror}") from None
            used = 0
            for folder in (self.images_dir, self.disks_dir):
                for dirpath, _dirs, files in os.walk(folder):
                    for name in files:
                        with contextlib.suppress(OSError):
                            used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            free = fs.f_bavail * fs.f_frsize
            return PoolUsage(
                used_bytes=used,
                capacity_bytes=used + free,
                available_bytes=free,
                source=f"statvfs of {self.root}; allocated bytes of Bramble's images and disks",
            )

        return await asyncio.to_thread(measure)

    async def import_disk(self, disk_id: str, chunks: AsyncIterator[bytes]) -> StoredDisk:
        """Write the raw stream to a temporary file, convert it to qcow2, rename into place."""
        final = self._disk_path(disk_id)
        if final.exists():
            raise StorageError(f"disk {disk_id} already exists")
        raw = self.disks_dir / f".import-{disk_id}.raw"
        partial = self.disks_dir / f".import-{disk_id}.qcow2"
        written = 0
        try:
            with open(raw, "wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
            if written == 0:
                raise StorageError("the import stream was empty")
            await _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(partial))
            os.replace(partial, final)
        finally:
            raw.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        return StoredDisk(disk_id=disk_id, path=str(final), format="qcow2", virtual_size_bytes=written)
