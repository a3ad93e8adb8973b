"""Local (qcow2) volumes with the real qemu-img: resize, snapshots, export/import byte-identical."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bramble.storage.driver import StorageError
from bramble.storage.local import LocalStorage

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def _once(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 300_000):
        yield data[start : start + 300_000]


async def test_volume_round_trip(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    disk = await store.create_volume("vol1", 4 * MIB)
    assert (await store.disk_info("vol1")).virtual_size_bytes == 4 * MIB
    original = os.urandom(4 * MIB)
    imported = await store.import_disk("vol2", _once(original))
    assert imported.virtual_size_bytes == 4 * MIB
    assert await _collect(store.export_disk("vol2")) == original

    await store.snapshot_create("vol2", "before")
    assert [s.name for s in await store.snapshot_list("vol2")] == ["before"]
    with pytest.raises(StorageError, match="already has"):
        await store.snapshot_create("vol2", "before")
    # Change the data (what a guest would do), then roll back.
    await store.delete_disk("vol1")
    changed = b"\xaa" * MIB + original[MIB:]
    await store.import_disk("vol1", _once(changed))
    assert await _collect(store.export_disk("vol1")) == changed
    scratch = await _collect(store.export_disk("vol2", snapshot="before"))
    assert scratch == original
    await store.snapshot_rollback("vol2", "before")
    assert await _collect(store.export_disk("vol2")) == original

    await store.resize_disk("vol2", 8 * MIB)
    grown = await _collect(store.export_disk("vol2"))
    assert grown[: 4 * MIB] == original and grown[4 * MIB :] == bytes(4 * MIB)
    with pytest.raises(StorageError, match="shrinking"):
        await store.resize_disk("vol2", MIB)
    with pytest.raises(StorageError, match="no snapshot"):
        await store.snapshot_rollback("vol2", "nope")
    with pytest.raises(StorageError, match="bad snapshot name"):
        await store.snapshot_create("vol2", "../x")
    await store.snapshot_delete("vol2", "before")
    await store.snapshot_delete("vol2", "before")
    assert await store.snapshot_list("vol2") == []
    with pytest.raises(StorageError, match="already exists"):
        await store.import_disk("vol2", _once(b"x"))
    assert disk.format == "qcow2"
    # Nothing temporary is left in the disks directory.
    assert sorted(p.name for p in (tmp_path / "disks").iterdir()) == ["vol1.qcow2", "vol2.qcow2"]


async def test_broken_import_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise OSError("client went away")

    with pytest.raises(OSError):
        await store.import_disk("vol", broken())
    with pytest.raises(StorageError, match="empty"):
        await store.import_disk("vol", _once(b""))
    assert list((tmp_path / "disks").iterdir()) == []
    with pytest.raises(StorageError, match="does not exist"):
        await store.resize_disk("vol", MIB)
