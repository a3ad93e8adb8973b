"""`bramble secgroup` and `vm create -g` against the real API app on fake drivers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.cli.test_cli_contract import QCOW2, ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here


def test_secgroup_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    assert [g["name"] for g in json.loads(ok(cli("secgroup", "list", "--json")))] == ["default"]
    ok(cli("secgroup", "create", "web", "--description", "http in"))
    group = json.loads(
        ok(cli("secgroup", "rule", "add", "web", "--direction", "ingress", "--protocol", "tcp", "--port", "80-81",
               "--json"))
    )  # fmt: skip
    [rule] = group["rules"]
    assert (rule["protocol"], rule["port_min"], rule["port_max"], rule["cidr"]) == ("tcp", 80, 81, None)
    assert "tcp port 80-81 anywhere" in ok(cli("secgroup", "show", "web"))

    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    ok(cli("image", "import", str(disk), "-n", "tiny", "--kernel", str(kernel)))
    ok(cli("net", "create", "lan", "--cidr", "10.20.0.0/24"))
    size = ("--cpus", "1", "--memory", "64", "--disk-size", "1")
    vm = json.loads(ok(cli("vm", "create", "w", "-i", "tiny", *size, "--net", "lan", "-g", "web", "-g", "default",
                           "--json")))  # fmt: skip
    assert vm["nics"][0]["security_groups"] == ["default", "web"]
    assert "groups default, web" in ok(cli("vm", "show", "w"))

    assert "in use by VM(s) w" in error_line(cli("secgroup", "delete", "web"))
    assert "PORT or FIRST-LAST" in error_line(
        cli("secgroup", "rule", "add", "web", "--direction", "ingress", "--protocol", "tcp", "--port", "http")
    )
    assert "direction" in error_line(cli("secgroup", "rule", "add", "web", "--direction", "sideways"))
    assert "not found" in error_line(cli("secgroup", "rule", "delete", "web", "no-such-rule"))

    ok(cli("secgroup", "rule", "delete", "web", rule["id"]))
    assert json.loads(ok(cli("secgroup", "show", "web", "--json")))["rules"] == []
    ok(cli("vm", "delete", "w", "--yes"))
    ok(cli("secgroup", "delete", "web"))
