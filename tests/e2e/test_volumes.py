"""Volumes through brambled with real TCG guests on local storage: a volume is hot-plugged into
running guest A, which writes a marker; it is detached (live), hot-plugged into guest B, which
reads the marker; then grown live, snapshotted, exported and imported byte-identical."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, wait_marker, wait_operation
from tests.qemu_helpers import wait_for

pytestmark = pytest.mark.qemu
MiB = 1024**2


def import_image(api: httpx.Client, name: str, guest: Path, cmdline: str) -> None:
    created = api.post("/v1/images", json={"name": name, "arch": "x86_64", "cmdline": cmdline})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    for part, filename in (("disk", "disk.qcow2"), ("kernel", "kernel"), ("initrd", "initrd.gz")):
        assert api.put(f"/v1/images/{image_id}/data/{part}", content=(guest / filename).read_bytes()).status_code == 200
    assert api.post(f"/v1/images/{image_id}/activate").status_code == 200


def create_vm(api: httpx.Client, name: str, image: str) -> None:
    response = api.post("/v1/vms", json={"name": name, "image": image, "cpus": 1, "memory_mib": 256, "disk_gib": 1})
    assert response.status_code == 202, response.text
    assert wait_operation(api, response.json()["operation"]["id"])["status"] == "succeeded"


def console_has(api: httpx.Client, vm: str, text: str) -> bool:
    return text in api.get(f"/v1/vms/{vm}/console", params={"offset": 0}).json()["data"]


def test_volume_moves_between_running_guests(daemon: Daemon, guests: dict) -> None:
    word = f"MARK{uuid.uuid4().hex[:10]}"
    with daemon.client() as api:
        import_image(api, "writer", guests["x86_64"], f"quiet panic=-1 bramble.volume=write:{word}")
        import_image(api, "reader", guests["x86_64"], "quiet panic=-1 bramble.volume=read")
        create_vm(api, "a", "writer")
        create_vm(api, "b", "reader")
        wait_marker(api, "a", deadline=300)

        created = api.post("/v1/volumes", json={"name": "data", "size_bytes": 8 * MiB})
        assert created.status_code == 201, created.text
        attached = api.post("/v1/volumes/data/attach", json={"vm": "a"}, timeout=120)
        assert attached.status_code == 200, attached.text
        wait_for(lambda: console_has(api, "a", f"BRAMBLE-GUEST-VOLUME wrote {word}"), 120, "A's write")
        refused = api.delete("/v1/volumes/data")
        assert refused.status_code == 409 and "'a'" in refused.json()["error"]["message"]
        detached = api.post("/v1/volumes/data/detach", timeout=120)
        assert detached.status_code == 200, detached.text

        wait_marker(api, "b", deadline=300)
        assert api.post("/v1/volumes/data/attach", json={"vm": "b"}, timeout=120).status_code == 200
        wait_for(lambda: console_has(api, "b", f"BRAMBLE-GUEST-VOLUME read {word}"), 120, "B's read")
        grown = api.post("/v1/volumes/data/resize", json={"size_bytes": 16 * MiB}, timeout=120)
        assert grown.status_code == 200 and grown.json()["size_bytes"] == 16 * MiB, grown.text
        assert api.post("/v1/volumes/data/detach", timeout=120).status_code == 200

        assert api.post("/v1/volumes/data/snapshots", json={"name": "s1"}).status_code == 201
        exported = api.get("/v1/volumes/data/export", timeout=120)
        assert exported.status_code == 200 and len(exported.content) == 16 * MiB
        assert exported.content.startswith(f"{word}\n".encode())
        assert api.get("/v1/volumes/data/export", params={"snapshot": "s1"}).content == exported.content
        imported = api.put("/v1/volumes/copy/import", content=exported.content, timeout=120)
        assert imported.status_code == 201, imported.text
        assert api.get("/v1/volumes/copy/export", timeout=120).content == exported.content
        vm_a = api.get("/v1/vms/a").json()
        assert vm_a["state"] == "running"
