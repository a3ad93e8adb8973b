"""The storage driver interface: images in, VM disks out.

An image is stored once; a VM disk is a copy-on-write clone of it, so creating a
disk costs the same whatever the image size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

IMAGE_FORMATS = ("qcow2", "raw", "iso")


class StorageError(Exception):
    """A storage action failed; the message says why."""


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    path: str
    format: str  # qcow2 | raw | iso
    size_bytes: int  # bytes on disk
    virtual_size_bytes: int  # the size the guest sees
    kernel_path: str | None = None
    initrd_path: str | None = None


@dataclass(frozen=True)
class StoredDisk:
    disk_id: str
    path: str
    format: str
    virtual_size_bytes: int


def detect_format(head: bytes) -> str:
    """Tell qcow2, ISO 9660 and raw apart from the first 64 KiB of a file."""
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        return "iso"
    return "raw"


class StorageDriver(ABC):
    name: str = "abstract"

    @abstractmethod
    async def write_image(self, image_id: str, chunks: AsyncIterator[bytes], *, part: str = "disk") -> int:
        """Store one part of an image (``disk``, ``kernel`` or ``initrd``) from a byte stream.

        Writes to a temporary file and renames it into place, so a broken upload leaves
        nothing behind. Returns the number of bytes written.
        """

    @abstractmethod
    async def finalize_image(self, image_id: str) -> StoredImage:
        """Inspect the uploaded image (format, virtual size) and make it usable."""

    @abstractmethod
    async def delete_image(self, image_id: str) -> None: ...

    @abstractmethod
    async def clone_disk(self, disk_id: str, image: StoredImage, size_bytes: int) -> StoredDisk:
        """Create a VM disk backed by ``image`` (copy-on-write), at least ``size_bytes`` big."""

    @abstractmethod
    async def create_blank_disk(self, disk_id: str, size_bytes: int) -> StoredDisk: ...

    @abstractmethod
    async def delete_disk(self, disk_id: str) -> None:
        """Remove a disk; removing a disk that is not there is not an error."""

    @abstractmethod
    async def disk_exists(self, disk_id: str) -> bool: ...

    @abstractmethod
    async def image_exists(self, image_id: str) -> bool: ...
