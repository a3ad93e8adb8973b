"""kill -9 of brambled: restarted, it re-attaches to the same QEMU processes and starts
only what should run but does not."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.conftest import Daemon, import_guest, pid_alive, qemu_pids, wait_for, wait_marker, wait_operation

pytestmark = pytest.mark.qemu

NAMES = ["keep1", "keep2", "keep3", "victim"]


def test_kill9_then_restart_adopts_and_never_duplicates(daemon: Daemon, guests: dict) -> None:
    import_guest(daemon, "tiny", guests["x86_64"], "x86_64")
    with daemon.client() as api:
        ops = []
        for name in NAMES:
            body = {"name": name, "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
            response = api.post("/v1/vms", json=body)
            assert response.status_code == 202, response.text
            ops.append(response.json()["operation"]["id"])
        for op_id in ops:
            assert wait_operation(api, op_id)["status"] == "succeeded"
        for name in NAMES:
            wait_marker(api, name)
        before = {name: api.get(f"/v1/vms/{name}").json()["pid"] for name in NAMES}
    assert sorted(qemu_pids(daemon.state_dir)) == sorted(before.values())

    daemon.kill9()
    assert all(pid_alive(pid) for pid in before.values()), "QEMU must survive the daemon"
    # While the daemon is down, one guest's QEMU dies too.
    os.kill(before["victim"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(before["victim"]), 10, "the victim QEMU to exit")

    daemon.start()
    with daemon.client() as api:

        def settled() -> dict | None:
            vms = {vm["name"]: vm for vm in api.get("/v1/vms").json()}
            ok = all(vms[n]["state"] == "running" and vms[n]["pid"] for n in NAMES)
            return vms if ok and vms["victim"]["pid"] != before["victim"] else None

        vms = wait_for(settled, 90, "all four VMs running again")
        for name in NAMES[:3]:
            assert vms[name]["pid"] == before[name], f"{name} was restarted instead of adopted"
        wait_marker(api, "victim", count=2)
        events = api.get("/v1/events", params={"target": "vm/victim", "action": "vm.state"}).json()
        assert any(e["after"]["state"] == "running" for e in events)
    live = qemu_pids(daemon.state_dir)
    assert len(live) == 4, live
    assert {vms[n]["pid"] for n in NAMES} == set(live)
