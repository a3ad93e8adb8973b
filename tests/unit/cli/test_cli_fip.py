"""`bramble fip` and the floating/volume lines of `vm show`, against the real API app on fake drivers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.cli.test_cli_contract import QCOW2, ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here

SIZE = ("--cpus", "1", "--memory", "64", "--disk-size", "1")


def _image(cli, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    ok(cli("image", "import", str(disk), "-n", "tiny", "--kernel", str(kernel)))


def test_fip_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    _image(cli, tmp_path)
    ok(cli("net", "create", "lan", "--cidr", "10.20.0.0/24"))
    ok(cli("net", "create", "public", "--cidr", "192.0.2.0/24", "--uplink", "eth9"))
    ok(cli("vm", "create", "web", "-i", "tiny", *SIZE, "--net", "lan"))

    fip = json.loads(ok(cli("fip", "create", "--net", "public", "--json")))
    assert (fip["address"], fip["network"], fip["vm"]) == ("192.0.2.2", "public", None)
    assert "192.0.2.50" in ok(cli("fip", "create", "--net", "public", "--address", "192.0.2.50"))
    listed = ok(cli("fip", "list"))
    assert "192.0.2.2" in listed and "192.0.2.50" in listed

    assert ok(cli("fip", "attach", "192.0.2.2", "web")) == "floating IP 192.0.2.2 -> web nic0 10.20.0.2\n"
    shown = json.loads(ok(cli("fip", "show", "192.0.2.2", "--json")))
    assert (shown["vm"], shown["nic"], shown["private_address"]) == ("web", 0, "10.20.0.2")
    assert "floating 192.0.2.2" in ok(cli("vm", "show", "web"))
    assert json.loads(ok(cli("vm", "show", "web", "--json")))["nics"][0]["floating_ip"] == "192.0.2.2"

    # bad input: one error line, exit 2, nothing changed
    assert "attached to VM 'web'" in error_line(cli("fip", "delete", "192.0.2.2"))
    assert "already attached to VM 'web'" in error_line(cli("fip", "attach", "192.0.2.2", "web"))
    assert "already has floating IP 192.0.2.2" in error_line(cli("fip", "attach", "192.0.2.50", "web"))
    assert "has no nic4" in error_line(cli("fip", "attach", "192.0.2.50", "web", "--nic", "4"))
    assert "VM 'ghost' not found" in error_line(cli("fip", "attach", "192.0.2.50", "ghost"))
    assert "network 'nowhere' not found" in error_line(cli("fip", "create", "--net", "nowhere"))
    assert "outside 192.0.2.0/24" in error_line(cli("fip", "create", "--net", "public", "--address", "10.0.0.9"))
    assert "already in use" in error_line(cli("fip", "create", "--net", "public", "--address", "192.0.2.50"))
    assert "floating IP '192.0.2.77' not found" in error_line(cli("fip", "show", "192.0.2.77"))
    assert "holds floating IP(s) 192.0.2.2, 192.0.2.50" in error_line(cli("net", "delete", "public"))

    assert ok(cli("fip", "detach", "192.0.2.2")) == "floating IP 192.0.2.2 detached\n"
    assert "floating" not in ok(cli("vm", "show", "web"))
    ok(cli("fip", "attach", "192.0.2.50", "web", "--nic", "0"))
    assert ok(cli("fip", "delete", "192.0.2.50", "--detach")) == "floating IP 192.0.2.50 deleted\n"
    assert ok(cli("fip", "delete", "192.0.2.2")) == "floating IP 192.0.2.2 deleted\n"
    assert json.loads(ok(cli("fip", "list", "--json"))) == []
    actions = [e["action"] for e in json.loads(ok(cli("event", "list", "--target", "fip/192.0.2.50", "--json")))]
    assert {"fip.create", "fip.attach", "fip.delete"} <= set(actions)


def test_vm_show_lists_volumes(real_api, cli, tmp_path: Path) -> None:
    _image(cli, tmp_path)
    ok(cli("vm", "create", "web", "-i", "tiny", *SIZE))
    ok(cli("volume", "create", "data", "--size", "2G"))
    ok(cli("volume", "attach", "data", "web"))
    shown = ok(cli("vm", "show", "web"))
    assert "volume data  2GiB (vol-" in shown, shown
    [volume] = json.loads(ok(cli("vm", "show", "web", "--json")))["volumes"]
    assert (volume["name"], volume["size_bytes"]) == ("data", 2 << 30) and volume["device"]
