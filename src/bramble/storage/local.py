"""Local storage: images and qcow2 disks in the state directory.

A VM disk is a qcow2 file whose backing file is the image, so creating one is
instant whatever the image size and the image is never written to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from bramble.storage.driver import StorageDriver, StorageError, StoredDisk, StoredImage, detect_format

PARTS = ("disk", "kernel", "initrd")
HEAD_BYTES = 64 * 1024


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
        final = folder / part
        partial = folder / f".{part}.partial"
        written = 0
        try:
            with open(partial, "wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        return written

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
