"""The local storage driver with real qemu-img: clones are copy-on-write and instant."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bramble.storage.driver import StorageError, detect_format
from bramble.storage.local import LocalStorage

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing (make test-deps)"),
]


async def stream(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def qcow2(path: Path, size: str, backing: Path | None = None) -> bytes:
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-F", "qcow2", "-b", str(backing)]
    subprocess.run([*args, str(path), size], check=True)
    return path.read_bytes()


async def test_import_and_clone_is_copy_on_write(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "state")
    data = qcow2(tmp_path / "src.qcow2", "20G")  # large virtual size, tiny file
    await storage.write_image("img", stream(data))
    await storage.write_image("img", stream(b"\x7fELF kernel"), part="kernel")
    image = await storage.finalize_image("img")
    assert (image.format, image.virtual_size_bytes) == ("qcow2", 20 * 1024**3)
    assert image.kernel_path and image.initrd_path is None

    disk = await storage.clone_disk("vm1", image, 1024**3)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", disk.path], check=True, capture_output=True, text=True
        ).stdout
    )
    assert info["backing-filename"] == image.path
    assert info["virtual-size"] == 20 * 1024**3  # never smaller than the image
    assert Path(disk.path).stat().st_size < 1024 * 1024
    await storage.delete_disk("vm1")
    assert not await storage.disk_exists("vm1")
    await storage.delete_disk("vm1")  # idempotent


async def test_broken_upload_leaves_no_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "state")

    async def broken() -> AsyncIterator[bytes]:
        yield b"QFI\xfb" + b"\0" * 100
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        await storage.write_image("img", broken())
    assert list((tmp_path / "state" / "images" / "img").iterdir()) == []


async def test_refuses_backing_files_and_garbage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "state")
    qcow2(tmp_path / "base.qcow2", "1G")
    sneaky = qcow2(tmp_path / "sneaky.qcow2", "1G", backing=tmp_path / "base.qcow2")
    await storage.write_image("sneaky", stream(sneaky))
    with pytest.raises(StorageError, match="backing file"):
        await storage.finalize_image("sneaky")
    await storage.write_image("junk", stream(b"QFI\xfb" + b"\xa5" * 4096))
    with pytest.raises(StorageError, match="not a usable qcow2"):
        await storage.finalize_image("junk")
    with pytest.raises(StorageError, match="no disk part"):
        await storage.finalize_image("empty")


def test_detects_formats() -> None:
    iso = bytearray(0x8006)
    iso[0x8001:0x8006] = b"CD001"
    assert detect_format(bytes(iso)) == "iso"
    assert detect_format(b"QFI\xfb" + b"\0" * 10) == "qcow2"
    assert detect_format(b"\0" * 512) == "raw"


async def test_iso_gets_a_blank_disk(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "state")
    iso = bytearray(0x9000)
    iso[0x8001:0x8006] = b"CD001"
    await storage.write_image("cd", stream(bytes(iso)))
    image = await storage.finalize_image("cd")
    assert image.format == "iso"
    disk = await storage.clone_disk("vm", image, 2 * 1024**3)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", disk.path], check=True, capture_output=True, text=True
        ).stdout
    )
    assert "backing-filename" not in info and info["virtual-size"] == 2 * 1024**3
