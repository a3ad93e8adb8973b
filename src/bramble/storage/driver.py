"""The storage driver interface: images in, VM disks out.

An image is stored once; a VM disk is a copy-on-write clone of it, so creating a
disk costs the same whatever the image size.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

IMAGE_FORMATS = ("qcow2", "raw", "iso")


class StorageError(Exception):
    """A storage action failed; the message says why."""


class StorageUnavailable(StorageError):
    """The backend did not answer in time (a Ceph cluster down or cut off): worth a retry later."""


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


@dataclass(frozen=True)
class DiskSnapshot:
    name: str
    size_bytes: int
    protected: bool
    created: datetime | None


@dataclass(frozen=True)
class PoolUsage:
    """Capacity and usage of a pool, and where the figures came from (``source``)."""

    used_bytes: int  # bytes the pool's data takes (before replication)
    capacity_bytes: int | None  # what the pool may hold (quota, or used + free); None: unknown
    available_bytes: int | None  # how much more fits; None: unknown
    source: str  # e.g. "statvfs", "ceph df", "rbd images"
    raw_used_bytes: int | None = None  # with replication (ceph df bytes_used), when known
    quota_bytes: int | None = None


def detect_format(head: bytes) -> str:
    """Tell qcow2, ISO 9660 and raw apart from the first 64 KiB of a file."""
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        return "iso"
    return "raw"


class StorageDriver(ABC):
    name: str = "abstract"
    # Snapshot create/delete and flatten are safe while a VM has the disk open (RBD: the
    # cluster orders them against the guest's writes); a qcow2 file is locked by QEMU.
    changes_while_open: bool = False

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

    # ------------------------------------------------------------------ volumes
    # A volume is a disk that outlives VMs. Backends that cannot do an action keep the
    # default, which says so; the control plane turns that into a clear error.

    async def create_volume(self, disk_id: str, size_bytes: int) -> StoredDisk:
        """A blank disk meant to be attached to VMs one after another."""
        return await self.create_blank_disk(disk_id, size_bytes)

    async def disk_info(self, disk_id: str) -> StoredDisk:
        raise NotImplementedError(f"{self.name} storage cannot inspect disks")

    async def resize_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        """Grow a disk; shrinking is refused (it would cut off guest data)."""
        raise NotImplementedError(f"{self.name} storage cannot resize disks")

    async def flatten_disk(self, disk_id: str) -> None:
        raise NotImplementedError(f"{self.name} storage cannot flatten disks")

    async def snapshot_create(self, disk_id: str, snapshot: str) -> DiskSnapshot:
        raise NotImplementedError(f"{self.name} storage has no snapshots")

    async def snapshot_list(self, disk_id: str) -> list[DiskSnapshot]:
        raise NotImplementedError(f"{self.name} storage has no snapshots")

    async def snapshot_rollback(self, disk_id: str, snapshot: str) -> None:
        raise NotImplementedError(f"{self.name} storage has no snapshots")

    async def snapshot_delete(self, disk_id: str, snapshot: str) -> None:
        raise NotImplementedError(f"{self.name} storage has no snapshots")

    def export_disk(self, disk_id: str, *, snapshot: str | None = None) -> AsyncIterator[bytes]:
        """The disk's (or a snapshot's) guest-visible bytes, raw, as a stream of chunks."""
        raise NotImplementedError(f"{self.name} storage cannot export disks")

    async def import_disk(self, disk_id: str, chunks: AsyncIterator[bytes]) -> StoredDisk:
        """A new disk from a raw byte stream (what export_disk gives); refused if it exists."""
        raise NotImplementedError(f"{self.name} storage cannot import disks")

    # ------------------------------------------------------------------ pools
    def export_image(self, image_id: str) -> AsyncIterator[bytes]:
        """An image's disk part as the guest sees it, raw (a qcow2 comes out converted)."""
        raise NotImplementedError(f"{self.name} storage cannot export images")

    async def usage(self) -> PoolUsage:
        """How full the pool is (``pool show``)."""
        raise NotImplementedError(f"{self.name} storage cannot report usage")

    async def check(self) -> None:
        """Prove the pool can be used (``pool create``): raises StorageError saying why not."""
        await self.usage()

    async def close(self) -> None:
        """Let go of connections (a deleted pool); the next call may open them again."""


async def write_file_atomically(final: Path, chunks: AsyncIterator[bytes]) -> int:
    """Stream ``chunks`` into ``final`` through a hidden partial file, fsync it, then rename.

    A broken upload leaves nothing behind under ``final``. Returns the number of bytes written.
    """
    partial = final.with_name(f".{final.name}.partial")
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
