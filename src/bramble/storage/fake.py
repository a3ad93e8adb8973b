"""In-memory storage for fast control-plane tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

from bramble.storage.driver import (
    DiskSnapshot,
    PoolUsage,
    StorageDriver,
    StorageError,
    StoredDisk,
    StoredImage,
    detect_format,
)


class FakeStorage(StorageDriver):
    name = "fake"
    changes_while_open = True  # as RBD; tests set it False to play a local qcow2 pool

    def __init__(self) -> None:
        self.images: dict[str, dict[str, bytes]] = {}
        self.disks: dict[str, StoredDisk] = {}
        self.fail_clone: str | None = None  # set to a message to make clone_disk fail
        # Volume contents: a sparse map would be overkill; tests use small volumes.
        self.data: dict[str, bytes] = {}
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.fail_volume: str | None = None  # set to a message to make create_volume fail
        self.fail_flatten: dict[str, str] = {}  # disk id -> the message flatten_disk fails with
        self.flattened: list[str] = []  # disk ids flatten_disk was called for, in order
        self.capacity_bytes = 100 * 1024**3

    async def write_image(self, image_id: str, chunks: AsyncIterator[bytes], *, part: str = "disk") -> int:
        data = b"".join([chunk async for chunk in chunks])
        self.images.setdefault(image_id, {})[part] = data
        return len(data)

    async def finalize_image(self, image_id: str) -> StoredImage:
        parts = self.images.get(image_id, {})
        if "disk" not in parts:
            raise StorageError("the image has no disk part: upload one before activating")
        disk = parts["disk"]
        return StoredImage(
            image_id=image_id,
            path=f"fake://images/{image_id}/disk",
            format=detect_format(disk[:65536]),
            size_bytes=len(disk),
            virtual_size_bytes=len(disk),
            kernel_path=f"fake://images/{image_id}/kernel" if "kernel" in parts else None,
            initrd_path=f"fake://images/{image_id}/initrd" if "initrd" in parts else None,
        )

    async def delete_image(self, image_id: str) -> None:
        self.images.pop(image_id, None)

    async def image_exists(self, image_id: str) -> bool:
        return image_id in self.images

    async def clone_disk(self, disk_id: str, image: StoredImage, size_bytes: int) -> StoredDisk:
        if self.fail_clone:
            raise StorageError(self.fail_clone)
        return await self.create_blank_disk(disk_id, max(size_bytes, image.virtual_size_bytes))

    async def create_blank_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        disk = StoredDisk(
            disk_id=disk_id, path=f"fake://disks/{disk_id}", format="qcow2", virtual_size_bytes=size_bytes
        )
        self.disks[disk_id] = disk
        return disk

    async def delete_disk(self, disk_id: str) -> None:
        self.disks.pop(disk_id, None)
        self.data.pop(disk_id, None)
        self.snapshots.pop(disk_id, None)

    async def disk_exists(self, disk_id: str) -> bool:
        return disk_id in self.disks

    def _disk(self, disk_id: str) -> StoredDisk:
        if disk_id not in self.disks:
            raise StorageError(f"disk {disk_id} does not exist")
        return self.disks[disk_id]

    def _chunks(self, data: bytes, size: int) -> Iterator[bytes]:
        """A disk's contents in 64 KiB chunks: ``data`` is the written prefix, zeros follow up to ``size``
        (a test's GiB disk never becomes a GiB of memory)."""
        for start in range(0, size, 65536):
            chunk = data[start : start + 65536]
            want = min(65536, size - start)
            yield chunk if len(chunk) == want else chunk + bytes(want - len(chunk))

    async def create_volume(self, disk_id: str, size_bytes: int) -> StoredDisk:
        if self.fail_volume:
            raise StorageError(self.fail_volume)
        return await self.create_blank_disk(disk_id, size_bytes)

    async def disk_info(self, disk_id: str) -> StoredDisk:
        return self._disk(disk_id)

    async def resize_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        disk = self._disk(disk_id)
        if size_bytes < disk.virtual_size_bytes:
            raise StorageError(f"disk {disk_id} is {disk.virtual_size_bytes} bytes; shrinking it is refused")
        self.disks[disk_id] = replace(disk, virtual_size_bytes=size_bytes)
        return self.disks[disk_id]

    async def flatten_disk(self, disk_id: str) -> None:
        self._disk(disk_id)
        if disk_id in self.fail_flatten:
            raise StorageError(self.fail_flatten[disk_id])
        self.flattened.append(disk_id)

    async def snapshot_create(self, disk_id: str, snapshot: str) -> DiskSnapshot:
        snaps = self.snapshots.setdefault(disk_id, {})
        if snapshot in snaps:
            raise StorageError(f"disk {disk_id} already has a snapshot {snapshot!r}")
        size = self._disk(disk_id).virtual_size_bytes
        # b"": never written (all zeros), so a VM disk of a GiB costs no memory
        snaps[snapshot] = self.data.get(disk_id, b"")
        return DiskSnapshot(name=snapshot, size_bytes=size, protected=False, created=None)

    async def snapshot_list(self, disk_id: str) -> list[DiskSnapshot]:
        size = self._disk(disk_id).virtual_size_bytes
        return [
            DiskSnapshot(name=name, size_bytes=size, protected=False, created=None)
            for name in self.snapshots.get(disk_id, {})
        ]

    async def snapshot_rollback(self, disk_id: str, snapshot: str) -> None:
        snaps = self.snapshots.get(disk_id, {})
        if snapshot not in snaps:
            raise StorageError(f"disk {disk_id} has no snapshot {snapshot!r}")
        if snaps[snapshot]:
            self.data[disk_id] = snaps[snapshot]
        else:
            self.data.pop(disk_id, None)

    async def snapshot_delete(self, disk_id: str, snapshot: str) -> None:
        self.snapshots.get(disk_id, {}).pop(snapshot, None)

    async def export_disk(self, disk_id: str, *, snapshot: str | None = None) -> AsyncIterator[bytes]:
        size = self._disk(disk_id).virtual_size_bytes
        if snapshot is None:
            data = self.data.get(disk_id, b"")
        else:
            snaps = self.snapshots.get(disk_id, {})
            if snapshot not in snaps:
                raise StorageError(f"disk {disk_id} has no snapshot {snapshot!r}")
            data = snaps[snapshot]
        for chunk in self._chunks(data, size):
            yield chunk

    async def import_disk(self, disk_id: str, chunks: AsyncIterator[bytes]) -> StoredDisk:
        if disk_id in self.disks:
            raise StorageError(f"disk {disk_id} already exists")
        data = b"".join([chunk async for chunk in chunks])
        if not data:
            raise StorageError("the import stream was empty")
        disk = await self.create_blank_disk(disk_id, len(data))
        self.data[disk_id] = data
        return disk

    async def export_image(self, image_id: str) -> AsyncIterator[bytes]:
        data = self.images.get(image_id, {}).get("disk")
        if data is None:
            raise StorageError(f"image {image_id} has no disk part")
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    async def usage(self) -> PoolUsage:
        """Image bytes plus the provisioned size of every disk (the fake keeps no sparse map)."""
        used = sum(len(part) for parts in self.images.values() for part in parts.values())
        used += sum(disk.virtual_size_bytes for disk in self.disks.values())
        return PoolUsage(used, self.capacity_bytes, max(0, self.capacity_bytes - used), "fake")

    def write(self, disk_id: str, offset: int, payload: bytes) -> None:
        """What a guest writing to the volume would do (tests only). Only the written prefix is kept."""
        size = self._disk(disk_id).virtual_size_bytes
        end = offset + len(payload)
        if offset < 0 or end > size:
            raise StorageError(f"write of {len(payload)} bytes at {offset} is outside disk {disk_id} ({size} bytes)")
        data = bytearray(self.data.get(disk_id, b""))
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        data[offset:end] = payload
        self.data[disk_id] = bytes(data)
