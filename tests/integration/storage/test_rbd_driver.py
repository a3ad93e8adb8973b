"""The RBD storage driver against a real throwaway Ceph cluster (the session's ``ceph`` fixture).

What the driver did is checked independently, as the Ceph admin, through the rbd CLI
and the Python bindings. Every test works under its own random id prefix and removes
every RBD image it made, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.ceph_cluster import CephCluster

from bramble.storage.driver import StorageError, StorageUnavailable, StoredImage
from bramble.storage.rbd import BASE_SNAPSHOT, HasClonesError, RbdStorageDriver, rbd_reference

pytestmark = [pytest.mark.anyio]

MiB = 1024**2
GiB = 1024**3


# ---------------------------------------------------------------------- helpers
class Admin:
    """The cluster as its administrator sees it: an oracle independent of the driver."""

    def __init__(self, cluster: CephCluster) -> None:
        import rados

        self.cluster = cluster
        # time-outs: an oracle that waits forever on a frozen OSD would hang the test run
        timeouts = {"rados_osd_op_timeout": "30", "rados_mon_op_timeout": "30"}
        self.rados = rados.Rados(conffile=str(cluster.conf), rados_id="admin", conf=timeouts)
        self.rados.connect(timeout=10)
        self.ioctx = self.rados.open_ioctx(cluster.pool)

    def close(self) -> None:
        self.ioctx.close()
        self.rados.shutdown()

    def images(self, token: str) -> list[str]:
        import rbd

        return sorted(name for name in rbd.RBD().list(self.ioctx) if token in name)

    def info(self, name: str) -> dict[str, Any]:
        out = subprocess.run(
            ["rbd", "info", "--format", "json", f"{self.cluster.pool}/{name}"],
            env=self.cluster.client_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(json.loads(out))

    def snaps(self, name: str) -> dict[str, bool]:
        import rbd

        with rbd.Image(self.ioctx, name, read_only=True) as image:
            return {s["name"]: image.is_protected_snap(s["name"]) for s in image.list_snaps()}

    def read(self, name: str, offset: int = 0, length: int | None = None, snapshot: str | None = None) -> bytes:
        import rbd

        with rbd.Image(self.ioctx, name, snapshot=snapshot, read_only=True) as image:
            end = image.size() if length is None else offset + length
            return b"".join(bytes(image.read(o, min(64 * MiB, end - o))) for o in range(offset, end, 64 * MiB))

    def write(self, name: str, data: bytes, offset: int) -> None:
        import rbd

        with rbd.Image(self.ioctx, name) as image:
            image.write(data, offset)
            image.flush()

    def purge(self, token: str) -> None:
        """Remove every image whose name holds ``token``: clones first, snapshots too."""
        import rbd

        for _ in range(3):
            names = self.images(token)
            if not names:
                return
            for name in sorted(names, key=lambda n: not n.startswith("disk-")):
                try:
                    with rbd.Image(self.ioctx, name) as image:
                        for snap in list(image.list_snaps()):
                            if image.is_protected_snap(snap["name"]):
                                image.set_snap(snap["name"])
                                children = list(image.list_children2())
                                image.set_snap(None)
                                if children:
                                    continue
                                image.unprotect_snap(snap["name"])
                            image.remove_snap(snap["name"])
                    rbd.RBD().remove(self.ioctx, name)
                except rbd.Error:
                    continue
        leftover = self.images(token)
        assert not leftover, f"could not clean up {leftover}"


@pytest.fixture
def admin(ceph: CephCluster) -> Iterator[Admin]:
    oracle = Admin(ceph)
    try:
        yield oracle
    finally:
        oracle.close()


@pytest.fixture
def token(admin: Admin) -> Iterator[str]:
    """A random id prefix for this test; every image holding it is removed afterwards."""
    value = "t" + secrets.token_hex(4)
    try:
        yield value
    finally:
        admin.purge(value)


def make_driver(ceph: CephCluster, work_dir: Path, **overrides: Any) -> RbdStorageDriver:
    values: dict[str, Any] = {
        "conf": ceph.conf,
        "pool": ceph.pool,
        "user": ceph.user,
        "keyring": ceph.user_keyring,
        "work_dir": work_dir,
        # Generous: on a busy host (guests booting beside the tests) a healthy cluster can take seconds.
        "op_timeout": 15,
        "connect_timeout": 15,
    }
    values.update(overrides)
    return RbdStorageDriver(**values)


@pytest.fixture
async def driver(ceph: CephCluster, tmp_path: Path) -> AsyncIterator[RbdStorageDriver]:
    storage = make_driver(ceph, tmp_path / "rbd")
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
async def impatient_driver(ceph: CephCluster, tmp_path: Path) -> AsyncIterator[RbdStorageDriver]:
    """Gives up after 3 s, for the tests that stop the cluster under it."""
    storage = make_driver(ceph, tmp_path / "rbd", op_timeout=3, connect_timeout=3)
    try:
        yield storage
    finally:
        await storage.close()


async def stream(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def sparse_raw(size: int, pieces: dict[int, bytes]) -> bytes:
    """``size`` zero bytes with ``pieces`` written at their offsets."""
    data = bytearray(size)
    for offset, piece in pieces.items():
        data[offset : offset + len(piece)] = piece
    return bytes(data)


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def import_image(driver: RbdStorageDriver, image_id: str, data: bytes) -> StoredImage:
    await driver.write_image(image_id, stream(data))
    return await driver.finalize_image(image_id)


# ---------------------------------------------------------------------- images and clones
async def test_raw_import_makes_a_protected_base_snapshot(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    data = sparse_raw(48 * MiB, {0: b"\xebboot" * 100, 20 * MiB: os.urandom(MiB), 48 * MiB - 7: b"the end"})
    written = await driver.write_image(f"{token}-img", stream(data))
    assert written == len(data)
    image = await driver.finalize_image(f"{token}-img")

    name = f"img-{token}-img"
    assert image.path == rbd_reference(
        driver.pool, name, user=driver.user, conf=driver.client_conf
    ) and image.path.startswith(f"rbd:{driver.pool}/{name}:id={driver.user}:conf=")
    assert (image.format, image.virtual_size_bytes) == ("raw", len(data))
    assert image.size_bytes < len(data) // 2  # zero blocks were not written
    info = admin.info(name)
    assert info["format"] == 2 and "layering" in info["features"]
    assert admin.snaps(name) == {BASE_SNAPSHOT: True}
    assert admin.read(name) == data
    assert admin.images(token) == [name]  # no temporary image left
    assert await driver.image_exists(f"{token}-img")
    assert await driver.finalize_image(f"{token}-img") == image  # finalizing twice is harmless


async def test_clone_is_copy_on_write_and_grows(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    data = sparse_raw(16 * MiB, {0: os.urandom(MiB), 15 * MiB: os.urandom(MiB)})
    image = await import_image(driver, f"{token}-img", data)

    disk = await driver.clone_disk(f"{token}-vm1", image, 1 * GiB)
    assert (disk.format, disk.virtual_size_bytes) == ("raw", GiB)
    assert disk.path.startswith(f"rbd:{driver.pool}/disk-{token}-vm1:")
    info = admin.info(f"disk-{token}-vm1")
    assert info["parent"]["image"] == f"img-{token}-img" and info["parent"]["snapshot"] == BASE_SNAPSHOT
    assert info["size"] == GiB
    assert await driver.disk_parent(f"{token}-vm1") == f"{token}-img"
    assert admin.read(f"disk-{token}-vm1", 0, len(data)) == data  # reads go through to the image
    assert admin.read(f"disk-{token}-vm1", len(data), MiB) == bytes(MiB)

    admin.write(f"disk-{token}-vm1", b"guest wrote this", 0)
    assert admin.read(f"img-{token}-img") == data  # the image is never written
    assert admin.read(f"disk-{token}-vm1", 0, 16) == b"guest wrote this"

    small = await driver.clone_disk(f"{token}-vm2", image, 1)  # never smaller than the image
    assert small.virtual_size_bytes == len(data)
    again = await driver.clone_disk(f"{token}-vm2", image, 1)  # a retried clone is the same disk
    assert again == small
    assert sorted(await driver.image_clones(f"{token}-img")) == [f"{token}-vm1", f"{token}-vm2"]

    grown = await driver.resize_disk(f"{token}-vm2", 2 * GiB)
    assert grown.virtual_size_bytes == admin.info(f"disk-{token}-vm2")["size"] == 2 * GiB
    with pytest.raises(StorageError, match="shrinking"):
        await driver.resize_disk(f"{token}-vm2", MiB)


async def test_qcow2_upload_is_converted_to_raw(
    driver: RbdStorageDriver, admin: Admin, token: str, tmp_path: Path
) -> None:
    qcow2 = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "320M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0xa5 300M 64k", str(qcow2)],
        check=True,
        capture_output=True,
    )
    raw = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)], check=True)

    written = await driver.write_image(f"{token}-q", stream(qcow2.read_bytes()))
    assert written == qcow2.stat().st_size
    image = await driver.finalize_image(f"{token}-q")
    assert (image.format, image.virtual_size_bytes) == ("raw", 320 * MiB)
    assert image.size_bytes <= 12 * MiB  # holes were skipped (allocation is in 4 MiB objects)
    stored = admin.read(f"img-{token}-q")
    assert stored == raw.read_bytes()
    assert list(Path(driver.spool_dir).iterdir()) == []  # the local spool file is gone


async def test_qcow2_with_a_backing_file_is_refused(
    driver: RbdStorageDriver, admin: Admin, token: str, tmp_path: Path
) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top), "64M"], check=True
    )
    with pytest.raises(StorageError, match="backing file"):
        await driver.write_image(f"{token}-bad", stream(top.read_bytes()))
    assert admin.images(token) == []
    assert list(Path(driver.spool_dir).iterdir()) == []


async def test_kernel_and_initrd_stay_on_the_node(driver: RbdStorageDriver, token: str) -> None:
    await driver.write_image(f"{token}-k", stream(b"\x7fELF kernel"), part="kernel")
    await driver.write_image(f"{token}-k", stream(b"initrd"), part="initrd")
    image = await import_image(driver, f"{token}-k", sparse_raw(MiB, {0: b"disk"}))
    assert image.kernel_path and Path(image.kernel_path).read_bytes() == b"\x7fELF kernel"
    assert image.initrd_path and Path(image.initrd_path).read_bytes() == b"initrd"
    await driver.delete_image(f"{token}-k")
    assert not Path(image.kernel_path).exists()
    assert not await driver.image_exists(f"{token}-k")


async def test_reupload_replaces_an_image_without_clones(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    await import_image(driver, f"{token}-img", sparse_raw(MiB, {0: b"first"}))
    image = await import_image(driver, f"{token}-img", sparse_raw(2 * MiB, {0: b"second"}))
    assert image.virtual_size_bytes == 2 * MiB
    assert admin.read(f"img-{token}-img", 0, 6) == b"second"
    assert admin.images(token) == [f"img-{token}-img"]


async def test_iso_image_gives_a_blank_disk(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    iso = sparse_raw(4 * MiB, {0x8001: b"CD001"})
    image = await import_image(driver, f"{token}-iso", iso)
    assert image.format == "iso"
    disk = await driver.clone_disk(f"{token}-vm", image, 64 * MiB)
    assert disk.virtual_size_bytes == 64 * MiB
    assert admin.info(f"disk-{token}-vm").get("parent") is None  # the ISO is a CD-ROM, not a parent
    assert admin.read(f"disk-{token}-vm", 0, MiB) == bytes(MiB)


async def test_concurrent_clones_share_one_connection(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    image = await import_image(driver, f"{token}-img", sparse_raw(8 * MiB, {0: b"shared"}))
    disks = await asyncio.gather(*(driver.clone_disk(f"{token}-{n}", image, 0) for n in range(8)))
    assert sorted(d.disk_id for d in disks) == sorted(f"{token}-{n}" for n in range(8))
    assert sorted(await driver.image_clones(f"{token}-img")) == sorted(f"{token}-{n}" for n in range(8))
    await asyncio.gather(*(driver.delete_disk(d.disk_id) for d in disks))
    assert admin.images(token) == [f"img-{token}-img"]


def test_bad_settings_are_refused_at_construction(tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    with pytest.raises(StorageError, match="bad Ceph pool name"):
        RbdStorageDriver(conf=conf, pool="a/b", work_dir=tmp_path)
    with pytest.raises(StorageError, match=r"without 'client\.'"):
        RbdStorageDriver(conf=conf, pool="p", user="client:x", work_dir=tmp_path)
    with pytest.raises(StorageError, match="whole seconds"):
        RbdStorageDriver(conf=conf, pool="p", work_dir=tmp_path, op_timeout=0)


async def test_clone_of_an_image_from_elsewhere_is_refused(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    from dataclasses import replace

    image = await import_image(driver, f"{token}-img", sparse_raw(MiB, {0: b"x"}))
    for path in ("/var/lib/bramble/images/x/disk", f"rbd:otherpool/img-{token}-img:id=bramble"):
        with pytest.raises(StorageError, match=f"not stored in RBD pool {driver.pool!r}"):
            await driver.clone_disk(f"{token}-vm", replace(image, path=path), 0)
    # the same image seen through another user or conf (settings changed) is still ours
    moved = replace(image, path=rbd_reference(driver.pool, f"img-{token}-img", user="other", conf="/etc/ceph/x.conf"))
    await driver.clone_disk(f"{token}-vm", moved, 0)
    assert admin.images(token) == [f"disk-{token}-vm", f"img-{token}-img"]


# ---------------------------------------------------------------------- dependencies
async def test_image_with_clones_cannot_be_deleted(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    data = sparse_raw(8 * MiB, {0: os.urandom(2 * MiB)})
    image = await import_image(driver, f"{token}-img", data)
    await driver.clone_disk(f"{token}-a", image, 0)
    await driver.clone_disk(f"{token}-b", image, 0)

    with pytest.raises(HasClonesError) as refused:
        await driver.delete_image(f"{token}-img")
    message = str(refused.value)
    assert f"{token}-a" in message and f"{token}-b" in message and "flatten" in message
    assert refused.value.clones == [f"{token}-a", f"{token}-b"]
    assert await driver.image_exists(f"{token}-img")
    assert admin.snaps(f"img-{token}-img") == {BASE_SNAPSHOT: True}  # untouched
    with pytest.raises(HasClonesError, match="cannot be replaced"):
        await driver.write_image(f"{token}-img", stream(b"new content"))

    await driver.delete_disk(f"{token}-b")
    await driver.delete_image(f"{token}-img", flatten=True)
    assert not await driver.image_exists(f"{token}-img")
    assert await driver.disk_parent(f"{token}-a") is None
    assert admin.read(f"disk-{token}-a") == data  # the flattened clone kept its data
    assert admin.images(token) == [f"disk-{token}-a"]


async def test_delete_disk_is_idempotent(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    disk = await driver.create_blank_disk(f"{token}-blank", 64 * MiB)
    assert disk.virtual_size_bytes == admin.info(f"disk-{token}-blank")["size"] == 64 * MiB
    assert await driver.disk_exists(f"{token}-blank")
    with pytest.raises(StorageError, match="already exists"):
        await driver.create_blank_disk(f"{token}-blank", MiB)
    await driver.snapshot_create(f"{token}-blank", "s1")  # snapshots go with the disk
    await driver.delete_disk(f"{token}-blank")
    assert not await driver.disk_exists(f"{token}-blank")
    await driver.delete_disk(f"{token}-blank")
    assert admin.images(token) == []


# ---------------------------------------------------------------------- snapshots, export, import
async def test_snapshot_rollback_export_import_round_trip(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    first = sparse_raw(12 * MiB + 4096, {0: os.urandom(MiB), 9 * MiB: os.urandom(3 * MiB + 4096)})
    image = await import_image(driver, f"{token}-img", first)
    await driver.clone_disk(f"{token}-d", image, 0)

    snap = await driver.snapshot_create(f"{token}-d", "before")
    assert (snap.name, snap.size_bytes, snap.protected) == ("before", len(first), False)
    assert snap.created is not None
    admin.write(f"disk-{token}-d", b"\xff" * MiB, 2 * MiB)
    second = admin.read(f"disk-{token}-d")
    assert second != first

    assert await collect(driver.export_disk(f"{token}-d")) == second
    assert await collect(driver.export_disk(f"{token}-d", snapshot="before", chunk_bytes=MiB + 1)) == first
    assert [s.name for s in await driver.snapshot_list(f"{token}-d")] == ["before"]

    await driver.snapshot_rollback(f"{token}-d", "before")
    assert admin.read(f"disk-{token}-d") == first
    with pytest.raises(StorageError, match="no snapshot 'nope'"):
        await driver.snapshot_rollback(f"{token}-d", "nope")

    imported = await driver.import_disk(f"{token}-copy", driver.export_disk(f"{token}-d"))
    assert imported.virtual_size_bytes == len(first)
    assert await collect(driver.export_disk(f"{token}-copy")) == first
    assert admin.info(f"disk-{token}-copy").get("parent") is None  # a full copy, not a clone
    with pytest.raises(StorageError, match="already exists"):
        await driver.import_disk(f"{token}-copy", stream(b"x"))

    await driver.snapshot_delete(f"{token}-d", "before")
    await driver.snapshot_delete(f"{token}-d", "before")  # idempotent
    assert await driver.snapshot_list(f"{token}-d") == []

    await driver.flatten_disk(f"{token}-d")
    assert await driver.disk_parent(f"{token}-d") is None
    assert admin.read(f"disk-{token}-d") == first


# ---------------------------------------------------------------------- bad input and faults
async def test_bad_ids_are_refused(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    for bad in ("a/b", "", "x@y", "../x", "a b", "x" * 200):
        with pytest.raises(StorageError, match="bad image id"):
            await driver.write_image(bad, stream(b"x"))
        with pytest.raises(StorageError, match="bad disk id"):
            await driver.delete_disk(bad)
    with pytest.raises(StorageError, match="unknown image part"):
        await driver.write_image(f"{token}-x", stream(b"x"), part="../../etc/passwd")
    with pytest.raises(StorageError, match="no disk part"):
        await driver.finalize_image(f"{token}-never")
    assert admin.images(token) == []


async def test_broken_upload_leaves_nothing(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(9 * MiB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await driver.write_image(f"{token}-img", broken())
    assert admin.images(token) == []
    assert not await driver.image_exists(f"{token}-img")


async def test_wrong_keyring_is_a_clear_error(ceph: CephCluster, admin: Admin, token: str, tmp_path: Path) -> None:
    keyring = tmp_path / "wrong.keyring"
    key = subprocess.run(["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True).stdout
    keyring.write_text(f"[client.{ceph.user}]\n\tkey = {key.strip()}\n")
    storage = make_driver(ceph, tmp_path / "rbd", keyring=keyring)
    try:
        with pytest.raises(StorageError, match=r"refused client\.bramble: wrong key") as refused:
            await storage.write_image(f"{token}-img", stream(b"x" * MiB))
        assert str(keyring) in str(refused.value)
        with pytest.raises(StorageError, match="refused"):
            await storage.image_exists(f"{token}-img")
    finally:
        await storage.close()
    assert admin.images(token) == []


async def test_missing_pool_is_a_clear_error(ceph: CephCluster, tmp_path: Path) -> None:
    storage = make_driver(ceph, tmp_path / "rbd", pool="no-such-pool")
    try:
        with pytest.raises(StorageError, match="the Ceph pool 'no-such-pool' does not exist"):
            await storage.disk_exists("x")
    finally:
        await storage.close()


async def test_unreachable_cluster_fails_within_the_connect_timeout(ceph: CephCluster, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nowhere.conf"
    conf.write_text(ceph.conf.read_text().replace(f"127.0.0.1:{ceph.mon_port}", f"127.0.0.1:{port}"))
    storage = make_driver(ceph, tmp_path / "rbd", conf=conf, connect_timeout=2)
    try:
        with pytest.raises(StorageError, match="Ceph is unreachable: no monitor answered within 2 s"):
            await storage.disk_exists("x")
    finally:
        await storage.close()


async def test_missing_conf_is_a_clear_error(ceph: CephCluster, tmp_path: Path) -> None:
    for keyring in (ceph.user_keyring, None):
        storage = make_driver(ceph, tmp_path / "rbd", conf=tmp_path / "missing.conf", keyring=keyring)
        with pytest.raises(StorageError, match=r"the Ceph configuration .*missing.conf does not exist"):
            await storage.disk_exists("x")


async def test_ceph_stopped_mid_upload(
    impatient_driver: RbdStorageDriver, ceph: CephCluster, admin: Admin, token: str
) -> None:
    driver = impatient_driver
    frozen = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield os.urandom(8 * MiB)
        ceph.freeze("osd.0")  # thawed by the test below, whatever the driver does with us
        frozen.set()
        for _ in range(4):
            yield os.urandom(4 * MiB)
        raise AssertionError("the driver kept writing into a stopped cluster")

    started = time.monotonic()
    try:
        with pytest.raises(StorageError, match="Ceph did not answer within 3 s"):
            await driver.write_image(f"{token}-img", upload())
    finally:
        ceph.thaw()
    assert frozen.is_set()
    print(f"failed after {time.monotonic() - started:.1f} s")  # shown with pytest -s
    # the cluster is back: no image under the real name; the leftover (if the undo could
    # not reach Ceph) is removed by the sweep
    assert not await driver.image_exists(f"{token}-img")
    await sweep_until_clean(driver, admin, token)


async def sweep_until_clean(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    await sweep_until_clean_except(driver, admin, token, keep=[])


async def sweep_until_clean_except(driver: RbdStorageDriver, admin: Admin, token: str, keep: list[str]) -> None:
    """Sweep until only ``keep`` is left of ``token``; a dead client's watch lapses within ~30 s."""
    end = time.monotonic() + 60
    while admin.images(token) != keep:
        with contextlib.suppress(StorageUnavailable):  # a cluster just thawed on a busy host: try again
            await driver.sweep_partials(older_than=0)
        if time.monotonic() > end:
            raise AssertionError(f"left behind: {admin.images(token)}")
        await asyncio.sleep(0.5)


async def test_ceph_stopped_mid_clone(
    impatient_driver: RbdStorageDriver, ceph: CephCluster, admin: Admin, token: str
) -> None:
    driver = impatient_driver
    image = await import_image(driver, f"{token}-img", sparse_raw(4 * MiB, {0: b"data"}))
    expected = f"cloning image {token}-img to disk {token}-vm: Ceph did not answer within 3 s"
    with ceph.frozen(), pytest.raises(StorageError, match=expected):
        await driver.clone_disk(f"{token}-vm", image, GiB)
    # the disk never appears under its name; a temporary clone the undo could not reach is swept
    assert not await driver.disk_exists(f"{token}-vm")
    await sweep_until_clean_except(driver, admin, token, keep=[f"img-{token}-img"])
    assert await driver.image_clones(f"{token}-img") == []
    disk = await driver.clone_disk(f"{token}-vm", image, GiB)  # and it works once Ceph is back
    assert disk.virtual_size_bytes == GiB


async def test_daemon_builds_the_rbd_driver_from_settings(ceph: CephCluster, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from bramble.config import Settings
    from bramble.daemon import make_storage

    storage_settings = {
        "driver": "rbd",
        "ceph_conf": str(ceph.conf),
        "ceph_pool": ceph.pool,
        "ceph_user": ceph.user,
        "ceph_keyring": str(ceph.user_keyring),
        "ceph_timeout_seconds": 5,
    }
    storage = make_storage(Settings(state_dir=tmp_path / "state", storage=storage_settings))  # type: ignore[arg-type]
    assert isinstance(storage, RbdStorageDriver)
    try:
        assert (storage.pool, storage.user, storage.op_timeout) == (ceph.pool, ceph.user, 5)
        assert storage.client_conf.is_relative_to(tmp_path / "state" / "rbd")
        assert not await storage.disk_exists("nothing-here")
    finally:
        await storage.close()
    with pytest.raises(ValidationError, match="ceph_pool"):
        Settings(state_dir=tmp_path, storage={"driver": "rbd", "ceph_pool": "a/b"})  # type: ignore[arg-type]


async def test_blocklisted_client_reconnects(driver: RbdStorageDriver, admin: Admin, token: str) -> None:
    """A client the cluster has blocklisted (as after a lost lock fight) gets a fresh connection."""
    await driver.create_blank_disk(f"{token}-d", MiB)
    addrs = driver._cluster.get_addrs()  # this driver's own client address(es)
    addr = addrs.split(",")[-1].strip("[]").split(":", 1)[-1] if addrs.startswith("[") else addrs
    ret, _, status = admin.rados.mon_command(
        json.dumps({"prefix": "osd blocklist", "blocklistop": "add", "addr": addr}), b""
    )
    assert ret == 0, status
    try:
        end = time.monotonic() + 30
        while True:  # the OSD learns of the blocklist with the next OSD map
            try:
                await driver.disk_exists(f"{token}-d")
            except StorageError:
                break
            assert time.monotonic() < end, "the blocklist never reached the driver"
            await asyncio.sleep(0.2)
        assert await driver.disk_exists(f"{token}-d")  # a new connection, a new address
    finally:
        admin.rados.mon_command(json.dumps({"prefix": "osd blocklist", "blocklistop": "rm", "addr": addr}), b"")
