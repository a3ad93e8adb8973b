"""Storage pools through the real API on fake drivers: default pool, create/use/delete, bad input,
image export, the migration that points old rows at the default pool."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from bramble.compute.fake import FakeComputeDriver
from bramble.core.errors import Invalid
from bramble.core.pools import check_same_pool
from bramble.daemon import Services, build_services
from bramble.db.migrate import alembic_config, upgrade
from bramble.db.models import ImageRow
from bramble.db.session import Database
from bramble.storage.fake import FakeStorage
from bramble.storage.pools import PoolSpec
from bramble.storage.registry import StorageRegistry
from tests.conftest import fake_settings
from tests.unit.api.helpers import make_image, make_vm

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024


def registry(services: Services) -> StorageRegistry:
    assert services.storage_pools is not None
    return services.storage_pools


def pool_store(services: Services, name: str) -> FakeStorage:
    store = registry(services)._drivers[name][1]
    assert isinstance(store, FakeStorage)
    return store


async def image_in(api: httpx.AsyncClient, name: str, pool: str, disk: bytes = b"\0" * 4096) -> dict:
    made = await api.post("/v1/images", json={"name": name, "arch": "x86_64", "pool": pool})
    assert made.status_code == 201 and made.json()["pool"] == pool, made.text
    image_id = made.json()["id"]
    assert (await api.put(f"/v1/images/{image_id}/data/disk", content=disk)).status_code == 200
    assert (await api.put(f"/v1/images/{image_id}/data/kernel", content=b"kernel")).status_code == 200
    activated = await api.post(f"/v1/images/{image_id}/activate")
    assert activated.status_code == 200, activated.text
    return activated.json()


async def test_the_default_pool_comes_from_the_config(api: httpx.AsyncClient, services: Services) -> None:
    pools = (await api.get("/v1/pools")).json()
    assert [(p["name"], p["driver"], p["is_default"]) for p in pools] == [("default", "fake", True)]
    shown = (await api.get("/v1/pools/default")).json()
    assert shown["usage"]["source"] == "fake" and shown["usage"]["used_bytes"] == 0
    assert (shown["images"], shown["vms"], shown["volumes"]) == ([], [], [])
    image = await make_image(api)
    assert image["pool"] == "default"
    # the default pool's driver is the daemon's storage driver, not a second one
    assert pool_store(services, "default") is services.cloud.deps.image_store
    assert image["id"] in services.cloud.deps.image_store.images  # type: ignore[attr-defined]
    # a second start with the same config finds the row and leaves it the only default
    await services.cloud.pools.ensure_default()
    assert len((await api.get("/v1/pools")).json()) == 1
    events = (await api.get("/v1/events", params={"target": "pool/default"})).json()
    assert [e["action"] for e in events] == ["pool.create"]


async def test_a_changed_storage_section_updates_the_default_pool(tmp_path: Path) -> None:
    first = await build_services(fake_settings(tmp_path / "state"))
    await first.close()
    second = await build_services(fake_settings(tmp_path / "state", storage={"driver": "local"}))
    try:
        pools = await second.cloud.pools.list_all()
        assert [(p.name, p.driver, p.is_default) for p in pools] == [("default", "local", True)]
        events = await second.cloud.events(target="pool/default")
        update = next(e for e in events if e.action == "pool.update")
        assert (update.before or {})["driver"] == "fake" and (update.after or {})["driver"] == "local"
    finally:
        await second.close()


async def test_a_pool_holds_images_disks_and_volumes_and_goes_only_when_empty(
    api: httpx.AsyncClient, services: Services
) -> None:
    created = await api.post("/v1/pools", json={"name": "fast", "driver": "fake"})
    assert created.status_code == 201, created.text
    assert (created.json()["is_default"], created.json()["usage"]["source"]) == (False, "fake")

    image_id = (await image_in(api, "img", "fast", b"\x01" * 8192))["id"]
    fast = pool_store(services, "fast")
    assert image_id in fast.images
    assert image_id not in services.cloud.deps.image_store.images  # type: ignore[attr-defined]

    vm = await make_vm(api, "a", image="img")  # default: the image's pool
    assert vm["pool"] == "fast" and vm["id"] in fast.disks
    other = await make_vm(api, "b", image="img", pool="default")  # fake to fake: no COW clone to keep
    assert other["pool"] == "default"
    vol = await api.post("/v1/volumes", json={"name": "v", "size_bytes": 4 * MIB, "pool": "fast"})
    assert vol.status_code == 201 and (vol.json()["pool"], vol.json()["driver"]) == ("fast", "fake")
    assert f"vol-{vol.json()['id']}" in fast.disks

    shown = (await api.get("/v1/pools/fast")).json()
    assert (shown["images"], shown["vms"], shown["volumes"]) == (["img"], ["a"], ["v"])
    assert shown["usage"]["used_bytes"] >= 8192 + 4 * MIB

    refused = await api.delete("/v1/pools/fast")
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert "images img" in message and "VM disks a" in message and "volumes v" in message
    for path in ("/v1/vms/a", "/v1/vms/b"):
        assert (await api.delete(path)).status_code == 202
    await services.cloud.deps.runner.drain()
    assert vm["id"] not in fast.disks
    assert (await api.delete("/v1/volumes/v")).status_code == 204
    assert (await api.delete("/v1/images/img")).status_code == 204
    assert (await api.delete("/v1/pools/fast")).status_code == 204
    assert [p["name"] for p in (await api.get("/v1/pools")).json()] == ["default"]
    events = (await api.get("/v1/events", params={"target": "pool/fast"})).json()
    assert {"pool.create", "pool.delete"} <= {e["action"] for e in events}


async def test_the_reconcile_loop_looks_for_a_disk_in_its_own_pool(api: httpx.AsyncClient, services: Services) -> None:
    assert (await api.post("/v1/pools", json={"name": "fast", "driver": "fake"})).status_code == 201
    await image_in(api, "img", "fast")
    vm = await make_vm(api, "a", image="img")
    desired = await services.cloud.nodes.desired_vm("node-1", vm["id"])
    assert desired is not None and desired.disk_pool is not None and desired.disk_pool.name == "fast"
    # the VM crashed: the agent restarts it because the disk is found in pool fast (not the default)
    assert services.agent is not None
    compute = services.agent.compute
    assert isinstance(compute, FakeComputeDriver)
    await compute.crash(vm["id"])
    await services.agent.reconcile_once()
    assert (await compute.status(vm["id"])).state.value == "running"
    # looked up in the default pool instead, the disk would be missing and the VM stay down
    assert not await services.cloud.deps.image_store.disk_exists(vm["id"])


async def test_bad_pool_requests_are_refused_and_write_nothing(api: httpx.AsyncClient, services: Services) -> None:
    cases = [
        ({"name": "Bad_Name", "driver": "fake"}, 422, "bad pool name"),
        ({"name": "p", "driver": "nfs"}, 422, "unknown driver 'nfs'"),
        ({"name": "p", "driver": "rbd", "ceph_pool": "x"}, 422, "needs --ceph-conf and --ceph-pool"),
        ({"name": "p", "driver": "rbd", "ceph_conf": "ceph.conf", "ceph_pool": "x"}, 422, "absolute path"),
        ({"name": "p", "driver": "rbd", "ceph_conf": "/c", "ceph_pool": "x", "ceph_user": "client.x"}, 422, "user"),
        ({"name": "p", "driver": "rbd", "ceph_conf": "/c", "ceph_pool": "a b"}, 422, "bad Ceph pool name"),
        ({"name": "p", "driver": "rbd", "ceph_conf": "/no/ceph.conf", "ceph_pool": "x"}, 422, "/no/ceph.conf does not"),
        ({"name": "p", "driver": "local", "ceph_pool": "x"}, 422, "apply to rbd pools only"),
        ({"name": "p", "driver": "fake", "path": "/srv"}, 422, "--path applies to local pools only"),
        ({"name": "p", "driver": "local", "path": "relative/dir"}, 422, "absolute path"),
        ({"name": "p", "driver": "fake", "timeout_seconds": 0}, 422, "timeout_seconds"),
        ({"name": "p", "driver": "fake", "colour": "red"}, 422, "unknown field"),
        ({"name": "default", "driver": "fake"}, 409, "already exists"),
    ]
    for body, status, text in cases:
        response = await api.post("/v1/pools", json=body)
        assert response.status_code == status, (body, response.text)
        assert text in response.json()["error"]["message"], (body, response.text)
    # the backend refuses (what a wrong Ceph key looks like): 422 with its words, no row
    registry(services).fake_refusals["locked"] = "Ceph refused client.x: wrong key or no such user"
    refused = await api.post("/v1/pools", json={"name": "locked", "driver": "fake"})
    assert refused.status_code == 422
    assert "Ceph refused client.x: wrong key or no such user" in refused.json()["error"]["message"]
    assert [p["name"] for p in (await api.get("/v1/pools")).json()] == ["default"]
    events = (await api.get("/v1/events", params={"target": "pool/locked"})).json()
    assert [e["outcome"] for e in events] == ["rejected"]

    assert (await api.get("/v1/pools/nope")).status_code == 404
    assert (await api.delete("/v1/pools/nope")).status_code == 404
    kept = await api.delete("/v1/pools/default")
    assert kept.status_code == 409 and "default pool" in kept.json()["error"]["message"]
    bad_image = await api.post("/v1/images", json={"name": "i", "arch": "x86_64", "pool": "nope"})
    assert bad_image.status_code == 422 and "unknown pool 'nope'" in bad_image.json()["error"]["message"]
    assert (await api.get("/v1/images")).json() == []
    await make_image(api)
    bad_vm = await api.post(
        "/v1/vms", json={"name": "v", "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1, "pool": "nope"}
    )
    assert bad_vm.status_code == 422 and "unknown pool 'nope'" in bad_vm.json()["error"]["message"]
    assert (await api.get("/v1/vms")).json() == []


async def test_an_rbd_pool_without_the_ceph_bindings_is_a_422_that_says_what_to_install(
    api: httpx.AsyncClient, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host without python3-rados/python3-rbd (the embedded default installs neither)."""
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon_host = 127.0.0.1\n")
    monkeypatch.setitem(sys.modules, "rados", None)  # `import rados` raises ImportError
    monkeypatch.setitem(sys.modules, "rbd", None)
    state_before = sorted(p.name for p in registry(services).state_dir.iterdir())
    response = await api.post(
        "/v1/pools", json={"name": "ceph", "driver": "rbd", "ceph_conf": str(conf), "ceph_pool": "x"}
    )
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "python3-rados and python3-rbd" in message and "install-deps.sh ceph" in message
    assert [p["name"] for p in (await api.get("/v1/pools")).json()] == ["default"]
    assert sorted(p.name for p in registry(services).state_dir.iterdir()) == state_before  # no probe left over
    events = (await api.get("/v1/events", params={"target": "pool/ceph"})).json()
    assert [e["outcome"] for e in events] == ["rejected"]


async def test_a_local_pool_reports_statvfs_and_exports_images(
    api: httpx.AsyncClient, services: Services, tmp_path: Path
) -> None:
    root = tmp_path / "pool-dir"
    created = await api.post("/v1/pools", json={"name": "disk2", "driver": "local", "path": str(root)})
    assert created.status_code == 201, created.text
    usage = created.json()["usage"]
    assert usage["source"].startswith("statvfs") and usage["available_bytes"] > 0
    taken = await api.post("/v1/pools", json={"name": "again", "driver": "local", "path": str(root)})
    assert taken.status_code == 409 and "already pool 'disk2'" in taken.json()["error"]["message"]

    payload = os.urandom(3 * MIB + 512)
    made = await api.post("/v1/images", json={"name": "raw", "arch": "x86_64", "pool": "disk2"})
    image_id = made.json()["id"]
    assert (await api.put(f"/v1/images/{image_id}/data/disk", content=payload)).status_code == 200
    assert (await api.post(f"/v1/images/{image_id}/activate")).status_code == 200
    assert (root / "images" / image_id / "disk").read_bytes() == payload
    exported = await api.get("/v1/images/raw/export")
    assert exported.status_code == 200 and exported.content == payload
    assert exported.headers["content-length"] == str(len(payload))
    grown = (await api.get("/v1/pools/disk2")).json()["usage"]["used_bytes"]
    assert grown >= len(payload) > usage["used_bytes"]
    assert (await api.delete("/v1/images/raw")).status_code == 204
    assert (await api.delete("/v1/pools/disk2")).status_code == 204
    assert root.is_dir() and list(root.iterdir()) == []  # a directory the user named stays, emptied

    # without --path the pool lives in state_dir/pools/NAME, and goes with the pool
    assert (await api.post("/v1/pools", json={"name": "inner", "driver": "local"})).status_code == 201
    inner = services.settings.state_dir / "pools" / "inner"
    assert (inner / "images").is_dir()
    assert (await api.delete("/v1/pools/inner")).status_code == 204
    assert not inner.exists()


async def test_image_export(api: httpx.AsyncClient, services: Services) -> None:
    payload = os.urandom(200_000)
    made = await api.post("/v1/images", json={"name": "img", "arch": "x86_64"})
    image_id = made.json()["id"]
    queued = await api.get("/v1/images/img/export")
    assert queued.status_code == 409 and "queued" in queued.json()["error"]["message"]
    await api.put(f"/v1/images/{image_id}/data/disk", content=payload)
    await api.post(f"/v1/images/{image_id}/activate")
    exported = await api.get(f"/v1/images/{image_id}/export")
    assert exported.status_code == 200 and exported.content == payload
    assert (await api.get("/v1/images/nope/export")).status_code == 404
    # the stored data vanished under the row: a clean 422 before any byte, not a cut stream
    services.cloud.deps.image_store.images.pop(image_id)  # type: ignore[attr-defined]
    gone = await api.get("/v1/images/img/export")
    assert gone.status_code == 422 and "has no disk part" in gone.json()["error"]["message"]


def test_rbd_clones_cannot_leave_the_image_pool() -> None:
    image = ImageRow(id="i", name="deb", arch="x86_64", status="active")
    ceph_a = PoolSpec(name="ceph-a", driver="rbd", ceph_conf="/a.conf", ceph_pool="a")
    ceph_b = PoolSpec(name="ceph-b", driver="rbd", ceph_conf="/a.conf", ceph_pool="b")
    local_1, local_2 = PoolSpec(name="l1", driver="local"), PoolSpec(name="l2", driver="local", path="/srv")
    check_same_pool(image, ceph_a, ceph_a)
    check_same_pool(image, local_1, local_2)  # a qcow2 overlay may back onto a file of another directory
    for source, target in ((ceph_a, ceph_b), (ceph_a, local_1), (local_1, ceph_a)):
        with pytest.raises(Invalid, match="cannot cross pools"):
            check_same_pool(image, source, target)


async def test_the_migration_puts_existing_rows_in_the_default_pool(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        async with db.writer.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0006"))
            await conn.execute(
                sa.text(
                    "INSERT INTO images (id, name, arch, status, created_at) VALUES ('i1', 'old', 'x86_64', 'active',"
                    " '2026-01-01 00:00:00')"
                )
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO volumes (id, name, size_bytes, driver, pool, format, state, created_at, updated_at)"
                    " VALUES ('v1', 'vol', 1048576, 'rbd', 'bramble', 'raw', 'available', '2026-01-01 00:00:00',"
                    " '2026-01-01 00:00:00')"
                )
            )
        await upgrade(db)
        async with db.read() as session:
            assert (await session.execute(sa.text("SELECT pool FROM images"))).scalar_one() == "default"
            assert (await session.execute(sa.text("SELECT pool FROM volumes"))).scalar_one() == "default"
            assert (await session.execute(sa.text("SELECT count(*) FROM storage_pools"))).scalar_one() == 0
    finally:
        await db.dispose()
