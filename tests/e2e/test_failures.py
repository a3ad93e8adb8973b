"""A VM whose QEMU cannot start leaves no disk, no process and no row, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, import_guest, qemu_pids, wait_operation

pytestmark = pytest.mark.qemu


def _image_dir(daemon: Daemon, name: str) -> Path:
    with daemon.client() as api:
        image_id = api.get(f"/v1/images/{name}").json()["id"]
    return daemon.state_dir / "images" / image_id


def _create_and_fail(daemon: Daemon, image: str) -> str:
    with daemon.client() as api:
        body = {"name": "doomed", "image": image, "cpus": 1, "memory_mib": 128, "disk_gib": 1}
        response = api.post("/v1/vms", json=body)
        assert response.status_code == 202, response.text
        op = wait_operation(api, response.json()["operation"]["id"])
        assert op["status"] == "failed", op
        assert api.get("/v1/vms/doomed").status_code == 404
        events = api.get("/v1/events", params={"target": "vm/doomed"}).json()
        assert events[-1]["outcome"] == "failed"
    assert list((daemon.state_dir / "disks").iterdir()) == []
    assert qemu_pids(daemon.state_dir) == set()
    run = daemon.state_dir / "run"
    assert not run.exists() or not any(p.name.endswith((".sock", ".pid")) for p in run.rglob("*"))
    return str(op["error"])


def test_corrupt_qcow2(daemon: Daemon, guests: dict) -> None:
    import_guest(daemon, "rotten", guests["x86_64"], "x86_64")
    disk = _image_dir(daemon, "rotten") / "disk"
    # The image went bad on disk after import: a qcow2 magic followed by garbage.
    disk.write_bytes(b"QFI\xfb" + b"\xa5" * 65536)
    error = _create_and_fail(daemon, "rotten")
    assert "qcow2" in error.lower() or "image" in error.lower(), error


def test_missing_kernel(daemon: Daemon, guests: dict) -> None:
    import_guest(daemon, "kernelless", guests["x86_64"], "x86_64")
    (_image_dir(daemon, "kernelless") / "kernel").unlink()
    error = _create_and_fail(daemon, "kernelless")
    assert "kernel" in error.lower(), error
