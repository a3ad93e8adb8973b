"""`bramble vm snapshot|flatten` and `bramble image delete --flatten` against the real API on fake drivers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.cli.test_cli_contract import QCOW2, ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here
SIZE = ("--cpus", "1", "--memory", "64", "--disk-size", "1")


def test_vm_snapshot_flatten_and_image_delete_flatten(real_api, cli, error_line, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    ok(cli("image", "import", str(disk), "-n", "plain"))
    vm = json.loads(ok(cli("vm", "create", "web", "-i", "plain", *SIZE, "--json")))
    store = real_api.cloud.volumes.store
    store.write(vm["id"], 0, b"before")

    assert "snapshot web@s1 created" in cli("vm", "snapshot", "create", "web", "s1").stderr
    assert "already has a snapshot 's1'" in error_line(cli("vm", "snapshot", "create", "web", "s1"))
    assert "bad snapshot name" in error_line(cli("vm", "snapshot", "create", "web", "../x"))
    listed = json.loads(ok(cli("vm", "snapshot", "list", "web", "--json")))
    assert [s["name"] for s in listed] == ["s1"]
    assert "s1" in ok(cli("vm", "snapshot", "list", "web"))
    store.write(vm["id"], 0, b"after!")
    assert "stop the VM first" in error_line(cli("vm", "snapshot", "rollback", "web", "s1"))
    ok(cli("vm", "stop", "web", "--force"))
    assert "rolled back to s1" in cli("vm", "snapshot", "rollback", "web", "s1").stderr
    assert store.data[vm["id"]][:6] == b"before"
    assert "no snapshot 'nope'" in error_line(cli("vm", "snapshot", "delete", "web", "nope"))
    ok(cli("vm", "snapshot", "delete", "web", "s1"))
    assert json.loads(ok(cli("vm", "snapshot", "list", "web", "--json"))) == []
    assert "not found" in error_line(cli("vm", "snapshot", "list", "ghost"))
    assert cli("vm", "snapshot", "create", "web").exit_code == 2  # SNAPSHOT missing

    assert json.loads(ok(cli("vm", "flatten", "web", "--json")))["name"] == "web"
    assert "web" in ok(cli("vm", "flatten", "web"))

    assert "--flatten" in error_line(cli("image", "delete", "plain"))
    ok(cli("image", "delete", "plain", "--flatten"))
    assert "plain" not in ok(cli("image", "list"))
    assert store.flattened.count(vm["id"]) == 3
