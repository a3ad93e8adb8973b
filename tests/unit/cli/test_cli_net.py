"""`bramble net` and `vm create --net` against the real API app on fake drivers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.cli.test_cli_contract import QCOW2, ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here


def test_net_and_vm_nics_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    net = json.loads(ok(cli("net", "create", "lan", "--cidr", "10.20.0.0/24", "--dns", "10.20.0.1,9.9.9.9", "--json")))
    assert (net["gateway"], net["dns"], net["nat"]) == ("10.20.0.1", ["10.20.0.1", "9.9.9.9"], False)
    ok(cli("net", "create", "dmz", "--cidr", "10.30.0.0/24", "--gateway", "10.30.0.254", "--nat"))
    assert "lan" in ok(cli("net", "list")) and "10.30.0.254" in ok(cli("net", "show", "dmz"))

    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    ok(cli("image", "import", str(disk), "-n", "tiny", "--kernel", str(kernel)))
    size = ("--cpus", "1", "--memory", "64", "--disk-size", "1")
    vm = json.loads(
        ok(cli("vm", "create", "web", "-i", "tiny", *size, "--net", "lan", "--net", "dmz:10.30.0.7", "--json"))
    )
    assert [(n["network"], n["address"]) for n in vm["nics"]] == [("lan", "10.20.0.2"), ("dmz", "10.30.0.7")]
    shown = ok(cli("vm", "show", "web"))
    assert "10.20.0.2" in shown and vm["nics"][0]["mac"] in shown

    assert "in use by VM(s) web" in error_line(cli("net", "delete", "lan"))
    assert "overlaps" in error_line(cli("net", "create", "x", "--cidr", "10.20.0.0/16"))
    assert "10.41.0.1" in error_line(cli("net", "create", "x", "--cidr", "10.40.0.0/24", "--gateway", "10.41.0.1"))
    assert "host bits" in error_line(cli("net", "create", "x", "--cidr", "10.40.0.9/24"))
    assert "network 'ghost' not found" in error_line(cli("vm", "create", "w2", "-i", "tiny", *size, "--net", "ghost"))
    assert "NAME or NAME:IP" in error_line(cli("vm", "create", "w2", "-i", "tiny", *size, "--net", "lan:"))
    assert "--uplink" in error_line(cli("net", "create", "v", "--cidr", "10.50.0.0/24", "--vlan", "5"))

    ok(cli("vm", "delete", "web", "--yes"))
    assert ok(cli("net", "delete", "lan")) == "network lan deleted\n"
    assert [n["name"] for n in json.loads(ok(cli("net", "list", "--json")))] == ["dmz"]
