"""Real guests boot through the API: x86_64 and aarch64 under TCG reach userspace."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Daemon, import_guest, qemu_pids, wait_marker, wait_operation

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_guest_reaches_userspace(daemon: Daemon, guests: dict, arch: str) -> None:
    import_guest(daemon, f"tiny-{arch}", guests[arch], arch)
    with daemon.client() as api:
        response = api.post(
            "/v1/vms", json={"name": f"vm-{arch}", "image": f"tiny-{arch}", "cpus": 1, "memory_mib": 256, "disk_gib": 1}
        )
        assert response.status_code == 202, response.text
        op = wait_operation(api, response.json()["operation"]["id"])
        assert op["status"] == "succeeded", op
        console = wait_marker(api, f"vm-{arch}")
        assert f"arch={arch}" in console
        vm = api.get(f"/v1/vms/vm-{arch}").json()
        assert vm["state"] == "running" and vm["accel"] == "tcg"
        assert vm["pid"] in qemu_pids(daemon.state_dir)
        host, port = vm["vnc"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) >= 5900, vm["vnc"]  # loopback only, a VNC port
