"""Storage pools on a real (throwaway) Ceph cluster, through the API: an RBD pool beside the local
default pool holds an image and a VM disk cloned from it, `pool show` usage grows, delete is refused
while in use; a wrong key, a missing Ceph pool and an unreachable or frozen cluster give clear
4xx/503 answers with nothing written; image export round trips byte-identical (local and RBD)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.ceph_cluster import CephCluster
from tests.conftest import fake_settings
from tests.unit.api.helpers import wait_operation

from bramble.daemon import Services, build_services

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024
TIMEOUT = 3  # seconds: the pools' Ceph timeout, so the unreachable cases stay short


@pytest.fixture(scope="module")
def ceph_pool(ceph: CephCluster) -> Iterator[dict[str, Any]]:
    """A Ceph pool of our own with a user limited to it (the session pool stays untouched)."""
    import rados
    import rbd

    name, user = f"h13-{secrets.token_hex(3)}", f"h13-{secrets.token_hex(3)}"
    admin = rados.Rados(conffile=str(ceph.conf), name="client.admin")
    admin.connect(timeout=20)

    def mon(command: dict[str, Any]) -> bytes:
        ret, out, status = admin.mon_command(json.dumps(command), b"", timeout=20)
        assert ret == 0, (command, status)
        return bytes(out)

    try:
        mon({"prefix": "osd pool create", "pool": name, "pg_num": 8, "pgp_num": 8})
        deadline = time.monotonic() + 60
        while True:  # writable once a placement group is active
            try:
                with admin.open_ioctx(name) as ioctx:
                    rbd.RBD().pool_init(ioctx, True)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        keyring = ceph.directory / f"client.{user}.keyring"
        caps = ["mon", "profile rbd", "osd", f"profile rbd pool={name}"]
        keyring.write_bytes(mon({"prefix": "auth get-or-create", "entity": f"client.{user}", "caps": caps}))
        yield {"name": name, "user": user, "keyring": keyring, "mon": mon, "admin": admin}
        mon({"prefix": "osd pool rm", "pool": name, "pool2": name, "yes_i_really_really_mean_it": True})
        mon({"prefix": "auth del", "entity": f"client.{user}"})
    finally:
        admin.shutdown()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    """All-in-one on fake compute with the real local driver as the default pool."""
    svc = await build_services(fake_settings(tmp_path / "state", storage={"driver": "local"}))
    try:
        yield svc
    finally:
        await svc.close()


def rbd_body(ceph: CephCluster, pool: dict[str, Any], name: str = "ceph", **changes: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "driver": "rbd",
        "ceph_conf": str(ceph.conf),
        "ceph_pool": pool["name"],
        "ceph_user": pool["user"],
        "ceph_keyring": str(pool["keyring"]),
        "timeout_seconds": TIMEOUT,
    }
    body.update(changes)
    return body


async def upload_image(api: httpx.AsyncClient, name: str, disk: bytes, pool: str | None = None) -> dict[str, Any]:
    made = await api.post("/v1/images", json={"name": name, "arch": "x86_64", **({"pool": pool} if pool else {})})
    assert made.status_code == 201, made.text
    image_id = made.json()["id"]
    assert (await api.put(f"/v1/images/{image_id}/data/disk", content=disk)).status_code == 200
    assert (await api.put(f"/v1/images/{image_id}/data/kernel", content=b"kernel")).status_code == 200
    activated = await api.post(f"/v1/images/{image_id}/activate")
    assert activated.status_code == 200, activated.text
    return activated.json()


def rbd_images(pool: dict[str, Any]) -> list[str]:
    import rbd

    with pool["admin"].open_ioctx(pool["name"]) as ioctx:
        return sorted(rbd.RBD().list(ioctx))


def leftovers(services: Services) -> list[str]:
    state = services.settings.state_dir
    return sorted(p.name for p in state.glob(".pool-probe-*")) + sorted(p.name for p in state.glob("rbd-pools/*"))


async def test_rbd_pool_holds_an_image_and_its_clones(
    api: httpx.AsyncClient, services: Services, ceph: CephCluster, ceph_pool: dict[str, Any], tmp_path: Path
) -> None:
    created = await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool))
    assert created.status_code == 201, created.text
    first = created.json()["usage"]
    assert "Bramble's RBD images" in first["source"]  # no manager in the test cluster: ceph df is empty
    assert first["capacity_bytes"] is None
    ceph_pool["mon"]({"prefix": "osd pool set-quota", "pool": ceph_pool["name"], "field": "max_bytes", "val": "2G"})
    try:
        quota = (await api.get("/v1/pools/ceph")).json()["usage"]
        assert quota["capacity_bytes"] == quota["quota_bytes"] == 2 * 1024**3
    finally:
        ceph_pool["mon"]({"prefix": "osd pool set-quota", "pool": ceph_pool["name"], "field": "max_bytes", "val": "0"})

    payload = os.urandom(4 * MIB) + b"\0" * (4 * MIB)  # one 4 MiB object of data, then a hole
    image = await upload_image(api, "deb", payload, pool="ceph")
    assert image["pool"] == "ceph" and image["format"] == "raw"
    assert f"img-{image['id']}" in rbd_images(ceph_pool)
    work_dir = services.settings.state_dir / "rbd-pools" / "ceph"  # node-local parts, per pool
    assert (work_dir / "images" / image["id"] / "kernel").read_bytes() == b"kernel"
    grown = (await api.get("/v1/pools/ceph")).json()
    assert grown["images"] == ["deb"]
    assert grown["usage"]["used_bytes"] - first["used_bytes"] == 4 * MIB  # whole objects, holes not counted

    # the VM's disk is an RBD clone in the image's pool (the default for --pool)
    response = await api.post(
        "/v1/vms", json={"name": "a", "image": "deb", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
    )
    assert response.status_code == 202, response.text
    op = await wait_operation(api, response.json()["operation"]["id"], deadline=60)
    assert op["status"] == "succeeded", op
    vm = (await api.get("/v1/vms/a")).json()
    assert vm["pool"] == "ceph" and f"disk-{vm['id']}" in rbd_images(ceph_pool)
    # a copy-on-write clone cannot go to another pool: refused before anything is made
    crossing = await api.post(
        "/v1/vms", json={"name": "b", "image": "deb", "cpus": 1, "memory_mib": 128, "disk_gib": 1, "pool": "default"}
    )
    assert crossing.status_code == 422 and "cannot cross pools" in crossing.json()["error"]["message"]
    volume = await api.post("/v1/volumes", json={"name": "v", "size_bytes": 8 * MIB, "pool": "ceph"})
    assert volume.status_code == 201 and volume.json()["driver"] == "rbd"

    shown = (await api.get("/v1/pools/ceph")).json()
    assert (shown["images"], shown["vms"], shown["volumes"]) == (["deb"], ["a"], ["v"])
    refused = await api.delete("/v1/pools/ceph")
    assert refused.status_code == 409 and "images deb; VM disks a; volumes v" in refused.json()["error"]["message"]

    exported = await api.get("/v1/images/deb/export")
    assert exported.status_code == 200 and exported.content == payload

    assert (await api.delete("/v1/vms/a")).status_code == 202
    await services.cloud.deps.runner.drain(timeout=60)
    assert (await api.delete("/v1/volumes/v")).status_code == 204
    assert (await api.delete("/v1/images/deb")).status_code == 204
    assert not [n for n in rbd_images(ceph_pool) if n.startswith(("img-", "disk-"))]
    assert (await api.delete("/v1/pools/ceph")).status_code == 204
    assert [p["name"] for p in (await api.get("/v1/pools")).json()] == ["default"]
    assert not work_dir.exists()


async def test_qcow2_images_export_raw_from_local_and_rbd(
    api: httpx.AsyncClient, services: Services, ceph: CephCluster, ceph_pool: dict[str, Any], tmp_path: Path
) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(3 * MIB) + b"\0" * MIB + os.urandom(MIB))
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    assert (await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool))).status_code == 201
    for name, pool in (("local-q", None), ("rbd-q", "ceph")):
        image = await upload_image(api, name, qcow2.read_bytes(), pool=pool)
        exported = await api.get(f"/v1/images/{name}/export")
        assert exported.status_code == 200
        assert int(exported.headers["content-length"]) == raw.stat().st_size == image["virtual_size_bytes"]
        assert exported.content == raw.read_bytes(), name
        assert (await api.delete(f"/v1/images/{name}")).status_code == 204
    assert list(services.settings.state_dir.glob("images/.export-*")) == []
    assert (await api.delete("/v1/pools/ceph")).status_code == 204


async def test_bad_pools_are_refused_with_nothing_written(
    api: httpx.AsyncClient, services: Services, ceph: CephCluster, ceph_pool: dict[str, Any], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.keyring"
    key = subprocess.run(["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True).stdout
    wrong.write_text(f"[client.{ceph_pool['user']}]\n\tkey = {key.strip()}\n")  # well-formed, not theirs
    refused = await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool, ceph_keyring=str(wrong)))
    assert refused.status_code == 422, refused.text
    assert f"Ceph refused client.{ceph_pool['user']}: wrong key or no such user" in refused.json()["error"]["message"]

    missing = await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool, ceph_pool="no-such-pool"))
    assert missing.status_code == 422 and "the Ceph pool 'no-such-pool' does not exist" in missing.text

    silent = tmp_path / "silent.conf"  # a monitor address where nothing listens
    silent.write_text("[global]\nmon_host = [v2:127.0.0.1:9]\nauth_client_required = cephx\n")
    started = time.monotonic()
    unreachable = await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool, ceph_conf=str(silent)))
    assert unreachable.status_code == 503, unreachable.text
    assert "Ceph is unreachable: no monitor answered within 3 s" in unreachable.json()["error"]["message"]
    assert time.monotonic() - started < 60  # bounded by the pool's timeout, not librados' 5 minutes

    with ceph.frozen("mon.a"):  # the cluster stops answering in the middle of things
        frozen = await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool))
    assert frozen.status_code == 503, frozen.text

    assert [p["name"] for p in (await api.get("/v1/pools")).json()] == ["default"]
    assert leftovers(services) == []
    events = (await api.get("/v1/events", params={"target": "pool/ceph"})).json()
    assert [e["outcome"] for e in events] == ["rejected"] * 4


async def test_a_frozen_osd_makes_show_say_why_and_a_clone_leave_nothing(
    api: httpx.AsyncClient, services: Services, ceph: CephCluster, ceph_pool: dict[str, Any]
) -> None:
    assert (await api.post("/v1/pools", json=rbd_body(ceph, ceph_pool))).status_code == 201
    await upload_image(api, "small", os.urandom(MIB), pool="ceph")
    queued = (await api.post("/v1/images", json={"name": "late", "arch": "x86_64", "pool": "ceph"})).json()
    with ceph.frozen("osd.0"):
        upload = await api.put(f"/v1/images/{queued['id']}/data/disk", content=os.urandom(MIB))
        assert upload.status_code == 503 and "did not answer within 3 s" in upload.json()["error"]["message"]
        shown = await api.get("/v1/pools/ceph")
        assert shown.status_code == 200, shown.text
        assert shown.json()["usage"] is None and "did not answer within 3 s" in shown.json()["usage_error"]
        response = await api.post(
            "/v1/vms", json={"name": "a", "image": "small", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
        )
        assert response.status_code == 202
        op = await wait_operation(api, response.json()["operation"]["id"], deadline=60)
    assert op["status"] == "failed" and "did not answer within 3 s" in str(op["error"])
    assert (await api.get("/v1/vms")).json() == []  # the undo removed the row
    stored = services.storage_pools._drivers["ceph"][1] if services.storage_pools else None
    assert stored is not None
    await stored.sweep_partials(older_than=0)  # type: ignore[attr-defined]
    assert not [n for n in rbd_images(ceph_pool) if n.startswith(("disk-", "tmp-"))]
    assert (await api.get("/v1/images/late")).json()["status"] == "queued"  # nothing under its real name
    assert f"img-{queued['id']}" not in rbd_images(ceph_pool)
    for name in ("small", "late"):
        assert (await api.delete(f"/v1/images/{name}")).status_code == 204
    assert (await api.delete("/v1/pools/ceph")).status_code == 204
