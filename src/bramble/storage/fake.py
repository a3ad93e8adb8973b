"""In-memory storage for fast control-plane tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bramble.storage.driver import StorageDriver, StorageError, StoredDisk, StoredImage, detect_format


class FakeStorage(StorageDriver):
    name = "fake"

    def __init__(self) -> None:
        self.images: dict[str, dict[str, bytes]] = {}
        self.disks: dict[str, StoredDisk] = {}
        self.fail_clone: str | None = None  # set to a message to make clone_disk fail

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

    async def disk_exists(self, disk_id: str) -> bool:
        return disk_id in self.disks
