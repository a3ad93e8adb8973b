"""The cache tier's pure parts: paths, the owner's command line, refusals (no QEMU, no Ceph)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bramble.storage.cache import EXPORT_NAME, CacheError, ImageCache, _Source, allocated_bytes
from bramble.storage.driver import StoredImage
from bramble.storage.rbd import RbdStorageDriver

pytestmark = pytest.mark.anyio


@pytest.fixture
def rbd(tmp_path: Path) -> RbdStorageDriver:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon_host = 127.0.0.1:1\n")
    return RbdStorageDriver(conf=conf, pool="vms", user="bramble", work_dir=tmp_path / "rbd")


@pytest.fixture
def cache() -> Iterator[ImageCache]:
    directory = Path(tempfile.mkdtemp(prefix="brc-", dir="/tmp"))  # short: unix socket paths
    try:
        yield ImageCache(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_cache_dir_too_long_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"cache_dir .* is too long"):
        ImageCache(tmp_path / ("x" * 80))


def test_paths_and_export_url(cache: ImageCache) -> None:
    sock = cache.socket_path("img1")
    assert sock == cache.cache_dir / "images" / "img1" / "nbd.sock"
    assert cache.export_url("img1") == f"nbd+unix:///{EXPORT_NAME}?socket={sock}"
    assert cache.overlay_path("vm1") == cache.cache_dir / "overlays" / "vm1.qcow2"
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(CacheError, match="bad"):
            cache.image_dir(bad)
        with pytest.raises(CacheError, match="bad"):
            cache.overlay_path(bad)


def test_overlay_image_reads_the_sidecar_and_ignores_other_disks(cache: ImageCache) -> None:
    overlay = cache.overlay_path("vm1")
    assert cache.overlay_image(str(overlay)) is None  # no sidecar yet
    overlay.with_suffix(".json").write_text(
        json.dumps({"image_id": "img1", "virtual_size_bytes": 5, "precache_bytes": 7})
    )
    assert cache.overlay_image(str(overlay)) == "img1"
    assert cache.overlay_precache_bytes(str(overlay)) == 7
    assert cache.overlay_size("vm1") == 5
    assert cache.images_in_use() == {"img1"}
    assert cache.overlay_image("/var/lib/bramble/disks/vm1.qcow2") is None
    assert cache.overlay_image("rbd:vms/disk-vm1:id=bramble:conf=/etc/ceph/ceph.conf") is None
    with pytest.raises(CacheError, match="no cache overlay"):
        cache.overlay_size("vm2")


def test_the_owner_reads_the_snapshot_read_only_and_exports_read_only(cache: ImageCache, rbd: RbdStorageDriver) -> None:
    directory = cache.image_dir("img1")
    source = _Source.of(StoredImage("img1", "rbd:vms/img-img1", "raw", 1, 1), rbd)
    argv = cache._argv(source, directory, directory / "ceph.conf")
    assert argv[0] == "qemu-storage-daemon" and "--daemonize" in argv
    nodes = {
        json.loads(argv[i + 1])["node-name"]: json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "--blockdev"
    }
    assert nodes["ceph"] == {
        "driver": "rbd",
        "node-name": "ceph",
        "pool": "vms",
        "image": "img-img1",
        "snapshot": "base",
        "user": "bramble",
        "conf": str(directory / "ceph.conf"),
        "read-only": True,
    }
    assert nodes["cache"]["backing"] == "base" and nodes["cor"]["driver"] == "copy-on-read"
    export = argv[argv.index("--export") + 1]
    assert "node-name=cor" in export and "writable=off" in export
    assert not any("key" in arg for arg in argv)  # the key stays in the keyring the conf names


async def test_an_iso_image_is_not_cached(cache: ImageCache, rbd: RbdStorageDriver) -> None:
    iso = StoredImage("img1", "rbd:vms/img-img1:id=bramble:conf=/c", "iso", 1, 1)
    with pytest.raises(CacheError, match="ISO"):
        await cache.ensure_owner(iso, rbd)
    with pytest.raises(CacheError, match="no cache on this node"):
        await cache.ensure_owner_for("img1")
    assert cache.owner_pid("img1") is None and cache.running() == []


def test_allocated_bytes(tmp_path: Path) -> None:
    assert allocated_bytes(tmp_path / "missing") == 0
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.write(b"x" * 4096)
    assert 4096 <= allocated_bytes(sparse) < 1024 * 1024


async def test_caches_of_deleted_images_are_swept_unless_something_reads_them(cache: ImageCache) -> None:
    from bramble.agent.cache import NodeCache
    from bramble.compute.fake import FakeComputeDriver

    for image_id in ("kept", "deleted", "read-by-an-overlay"):
        directory = cache.image_dir(image_id)
        directory.mkdir(parents=True)
        (directory / "cache.qcow2").write_bytes(b"\1" * 65536)
        (directory / "image.json").write_text("{}")
    (cache.images_dir / "lost+found").mkdir()  # not an image id: never looked into, never removed
    overlay = cache.overlay_path("disk-1")
    overlay.write_bytes(b"")
    overlay.with_suffix(".json").write_text(json.dumps({"image_id": "read-by-an-overlay"}))
    assert cache.cached() == ["deleted", "kept", "read-by-an-overlay"]
    assert cache.cached_bytes("deleted") >= 65536

    node = NodeCache(cache, FakeComputeDriver())
    removed = await node.sweep_deleted({"kept"})
    assert [image_id for image_id, _ in removed] == ["deleted"]
    assert removed[0][1] >= 65536  # what it freed
    assert not cache.image_dir("deleted").exists()
    assert cache.cached() == ["kept", "read-by-an-overlay"]  # known, or still read by a VM's overlay
    assert await node.sweep_deleted({"kept"}) == []
    assert (cache.images_dir / "lost+found").is_dir()


def test_rbd_without_the_ceph_bindings_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from bramble.storage.driver import StorageError

    monkeypatch.setitem(sys.modules, "rados", None)  # as on a node where only `make up` ran
    with pytest.raises(StorageError, match=r"python3-rados and python3-rbd.*install-deps.sh ceph"):
        RbdStorageDriver(conf=tmp_path / "ceph.conf", pool="vms", work_dir=tmp_path / "rbd")
