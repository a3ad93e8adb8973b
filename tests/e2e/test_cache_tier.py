"""The cache tier through brambled: RBD storage on a throwaway Ceph cluster, real TCG guests.

`[storage] cache = "on"`: a VM created without a choice gets a local overlay on the node's
cache of its image (nothing per VM in Ceph), `vm show` reports the cache, `vm cache drop`
moves the running guest onto an RBD clone (it keeps running and reboots to its marker), a
`--no-cache` VM gets an RBD clone, and deleting a cached VM removes its overlay.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ceph_cluster import CephCluster
from tests.e2e.conftest import Daemon, running_daemon, wait_marker, wait_operation
from tests.qemu_helpers import wait_for

pytestmark = pytest.mark.qemu


def storage_daemons(text: str) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"qemu-storage-daemon") and any(text.encode() in a for a in argv):
                    found.add(int(proc.name))
    return found


def rbd_names(ceph: CephCluster) -> set[str]:
    import rados
    import rbd

    with rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster, cluster.open_ioctx(ceph.pool) as ioctx:
        return set(rbd.RBD().list(ioctx))


@pytest.fixture
def cached_daemon(tmp_path: Path, ceph: CephCluster, guests: dict[str, Path]) -> Iterator[tuple[Daemon, Path]]:
    cache_dir = Path(tempfile.mkdtemp(prefix="brc-", dir="/tmp"))  # short: unix sockets live in it
    storage = (
        f'[storage]\ndriver = "rbd"\nceph_conf = "{ceph.conf}"\nceph_pool = "{ceph.pool}"\n'
        f'ceph_user = "{ceph.user}"\nceph_keyring = "{ceph.user_keyring}"\n'
        f'cache = "on"\ncache_dir = "{cache_dir}"\nprecache_gib = 0.03\n'
    )
    try:
        with running_daemon(tmp_path, storage) as d:
            yield d, cache_dir
    finally:
        for pid in storage_daemons(str(cache_dir)):  # the owners outlive the daemon, like QEMU
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not storage_daemons(str(cache_dir)), 20, "the cache owners to exit")
        shutil.rmtree(cache_dir, ignore_errors=True)


def create_vm(api: httpx.Client, name: str, log: Path, **extra: object) -> dict:
    body = {"name": name, "image": "guest", "cpus": 1, "memory_mib": 128, "disk_gib": 1, **extra}
    response = api.post("/v1/vms", json=body)
    assert response.status_code == 202, response.text
    op = wait_operation(api, response.json()["operation"]["id"], deadline=240)
    assert op["status"] == "succeeded", f"{op.get('error')}\n--- brambled log:\n{log.read_text()[-4000:]}"
    return dict(api.get(f"/v1/vms/{name}").json())


def test_cached_vms_through_brambled(
    cached_daemon: tuple[Daemon, Path], ceph: CephCluster, guests: dict[str, Path]
) -> None:
    daemon, cache_dir = cached_daemon
    guest = guests["x86_64"]
    with daemon.client() as api:
        created = api.post("/v1/images", json={"name": "guest", "arch": "x86_64", "cmdline": "quiet panic=-1"})
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        for part, filename in (("disk", "disk.qcow2"), ("kernel", "kernel"), ("initrd", "initrd.gz")):
            assert (
                api.put(f"/v1/images/{image_id}/data/{part}", content=(guest / filename).read_bytes()).status_code
                == 200
            )
        assert api.post(f"/v1/images/{image_id}/activate").status_code == 200

        a = create_vm(api, "a", daemon.log)  # the configured default: cached
        assert a["cache"] == "on"
        wait_marker(api, "a", deadline=300)
        overlay = cache_dir / "overlays" / f"{a['id']}.qcow2"
        assert overlay.exists()
        assert f"disk-{a['id']}" not in rbd_names(ceph)  # nothing per VM in Ceph
        assert len(storage_daemons(str(cache_dir))) == 1
        shown = wait_for(lambda: api.get("/v1/vms/a").json()["cache_stats"], 60, "cache figures of a")
        assert shown["image_id"] == image_id and shown["cache_bytes"] > 0

        b = create_vm(api, "b", daemon.log, cache=False)
        assert b["cache"] == "off" and f"disk-{b['id']}" in rbd_names(ceph)

        # drop: the running guest moves onto an RBD clone and keeps going
        response = api.post("/v1/vms/a/cache/drop")
        assert response.status_code == 202, response.text
        op = wait_operation(api, response.json()["operation"]["id"], deadline=240)
        assert op["status"] == "succeeded", f"{op.get('error')}\n--- brambled log:\n{daemon.log.read_text()[-4000:]}"
        after = api.get("/v1/vms/a").json()
        assert after["cache"] == "off" and after["state"] == "running" and after["cache_stats"] is None
        assert f"disk-{a['id']}" in rbd_names(ceph) and not overlay.exists()
        again = api.post("/v1/vms/a/cache/drop")
        assert again.status_code == 409
        reboot = api.post("/v1/vms/a/actions/reboot")
        assert wait_operation(api, reboot.json()["operation"]["id"])["status"] == "succeeded"
        wait_marker(api, "a", deadline=300, count=2)

        # a cached VM deleted: its overlay (its writes) goes, nothing was in Ceph
        c = create_vm(api, "c", daemon.log, start=False)
        assert c["cache"] == "on" and (cache_dir / "overlays" / f"{c['id']}.qcow2").exists()
        deleted = api.delete("/v1/vms/c")
        assert wait_operation(api, deleted.json()["operation"]["id"])["status"] == "succeeded"
        assert not (cache_dir / "overlays" / f"{c['id']}.qcow2").exists()
        assert f"disk-{c['id']}" not in rbd_names(ceph)

        for name in ("a", "b"):
            gone = api.delete(f"/v1/vms/{name}")
            assert wait_operation(api, gone.json()["operation"]["id"])["status"] == "succeeded"
        assert not ({f"disk-{a['id']}", f"disk-{b['id']}"} & rbd_names(ceph))
