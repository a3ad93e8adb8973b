"""`bramble volume` against the real API app on fake drivers: lifecycle, snapshots, export/import."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.unit.cli.test_cli_contract import QCOW2, ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here
MIB = 1024 * 1024


def test_volume_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    vol = json.loads(ok(cli("volume", "create", "data", "--size", "4M", "--json")))
    assert (vol["state"], vol["size_bytes"]) == ("available", 4 * MIB)
    assert "data" in ok(cli("volume", "list"))
    assert json.loads(ok(cli("volume", "resize", "data", "-s", "8M", "--json")))["size_bytes"] == 8 * MIB
    assert "shrinking" in error_line(cli("volume", "resize", "data", "-s", "4M"))

    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    ok(cli("image", "import", str(disk), "-n", "tiny", "--kernel", str(kernel)))
    size = ("--cpus", "1", "--memory", "64", "--disk-size", "1")
    ok(cli("vm", "create", "a", "-i", "tiny", *size, "--no-start"))
    attached = json.loads(ok(cli("volume", "attach", "data", "a", "--json")))
    assert (attached["vm"], attached["state"]) == ("a", "attached")
    assert "attached to VM 'a'" in error_line(cli("volume", "delete", "data"))
    assert "attached to VM 'a'" in error_line(cli("volume", "snapshot", "create", "data", "s1"))
    ok(cli("volume", "detach", "data"))

    store = real_api.cloud.volumes.store
    original = os.urandom(MIB)
    store.write(f"vol-{vol['id']}", 0, original)
    ok(cli("volume", "snapshot", "create", "data", "s1"))
    assert [s["name"] for s in json.loads(ok(cli("volume", "snapshot", "list", "data", "--json")))] == ["s1"]
    store.write(f"vol-{vol['id']}", 0, b"changed")
    saved = tmp_path / "s1.raw"
    ok(cli("volume", "export", "data@s1", str(saved)))
    assert saved.read_bytes()[:MIB] == original and saved.stat().st_size == 8 * MIB
    ok(cli("volume", "snapshot", "rollback", "data", "s1"))
    current = tmp_path / "now.raw"
    ok(cli("volume", "export", "data", str(current)))
    assert current.read_bytes() == saved.read_bytes()
    piped = cli("volume", "export", "data", "-")
    assert piped.exit_code == 0 and piped.stdout_bytes == saved.read_bytes()
    copy = json.loads(ok(cli("volume", "import", "copy", str(saved), "--json")))
    assert copy["size_bytes"] == 8 * MIB
    from_stdin = json.loads(ok(cli("volume", "import", "copy2", "-", "--json", input=saved.read_bytes())))
    assert from_stdin["size_bytes"] == 8 * MIB
    ok(cli("volume", "snapshot", "delete", "data", "s1"))
    ok(cli("volume", "delete", "data"))
    assert [v["name"] for v in json.loads(ok(cli("volume", "list", "--json")))] == ["copy", "copy2"]
    assert list(tmp_path.glob(".*partial")) == []


def test_volume_bad_input(real_api, cli, error_line, tmp_path: Path) -> None:
    assert "invalid volume size" in error_line(cli("volume", "create", "v", "--size", "lots"))
    assert "bad volume name" in error_line(cli("volume", "create", "Bad_Name", "--size", "1M"))
    assert "not found" in error_line(cli("volume", "show", "nope"))
    assert "not found" in error_line(cli("volume", "export", "nope", str(tmp_path / "x.raw")))
    assert not (tmp_path / "x.raw").exists()
    ok(cli("volume", "create", "v", "--size", "1M"))
    assert "no snapshot" in error_line(cli("volume", "export", "v@nope", str(tmp_path / "x.raw")))
    assert "bad source" in error_line(cli("volume", "export", "v@", str(tmp_path / "x.raw")))
    assert "no such file" in error_line(cli("volume", "import", "w", str(tmp_path / "missing.raw")))
    assert "already exists" in error_line(cli("volume", "create", "v", "--size", "1M"))
    assert not list(tmp_path.glob("*.raw")) and not list(tmp_path.glob(".*partial"))
