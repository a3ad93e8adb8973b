"""`bramble pool` and `image export` against the real API app on fake drivers."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.unit.cli.test_cli_contract import ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here


def test_pool_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    listed = json.loads(ok(cli("pool", "list", "--json")))
    assert [(p["name"], p["is_default"]) for p in listed] == [("default", True)]
    made = json.loads(ok(cli("pool", "create", "fast", "--driver", "fake", "--json")))
    assert (made["name"], made["driver"], made["usage"]["source"]) == ("fast", "fake", "fake")
    table = ok(cli("pool", "list"))
    assert "fast" in table and "default" in table

    disk = tmp_path / "disk.raw"
    payload = os.urandom(300_000)
    disk.write_bytes(payload)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    image = json.loads(
        ok(cli("image", "import", str(disk), "-n", "img", "--kernel", str(kernel), "--pool", "fast", "--json"))
    )
    assert image["pool"] == "fast"
    size = ("--cpus", "1", "--memory", "64", "--disk-size", "1")
    vm = json.loads(ok(cli("vm", "create", "a", "-i", "img", *size, "--no-start", "--json")))
    assert vm["pool"] == "fast"
    ok(cli("volume", "create", "v", "--size", "4M", "--pool", "fast"))
    raw = tmp_path / "vol.raw"
    raw.write_bytes(os.urandom(8192))
    imported = json.loads(ok(cli("volume", "import", "w", str(raw), "--pool", "fast", "--json")))
    assert imported["pool"] == "fast"
    ok(cli("volume", "delete", "w"))

    shown = ok(cli("pool", "show", "fast"))
    for text in ("fake", "img", "VM disks", "volumes", "figures from"):
        assert text in shown, shown
    assert json.loads(ok(cli("pool", "show", "fast", "--json")))["vms"] == ["a"]
    message = error_line(cli("pool", "delete", "fast"))
    assert "still holds images img; VM disks a; volumes v" in message

    out = tmp_path / "img.raw"
    ok(cli("image", "export", "img", str(out)))
    assert out.read_bytes() == payload
    piped = cli("image", "export", "img", "-")
    assert piped.exit_code == 0 and piped.stdout_bytes == payload
    assert list(tmp_path.glob(".*partial")) == []

    ok(cli("vm", "delete", "a"))
    ok(cli("volume", "delete", "v"))
    ok(cli("image", "delete", "img"))
    ok(cli("pool", "delete", "fast"))
    assert [p["name"] for p in json.loads(ok(cli("pool", "list", "--json")))] == ["default"]


def test_pool_bad_input(real_api, cli, error_line, tmp_path: Path) -> None:
    assert "--driver must be local or rbd" in error_line(cli("pool", "create", "p", "--driver", "nfs"))
    assert "needs --ceph-conf and --ceph-pool" in error_line(cli("pool", "create", "p", "--driver", "rbd"))
    missing = error_line(
        cli("pool", "create", "p", "--driver", "rbd", "--ceph-conf", str(tmp_path / "none.conf"), "--ceph-pool", "x")
    )
    assert "none.conf does not exist" in missing
    assert "bad pool name" in error_line(cli("pool", "create", "Bad!", "--driver", "fake"))
    assert "default pool" in error_line(cli("pool", "delete", "default"))
    assert "not found" in error_line(cli("pool", "show", "nope"))
    assert "unknown pool 'nope'" in error_line(cli("volume", "create", "v", "--size", "4M", "--pool", "nope"))
    assert "not found" in error_line(cli("image", "export", "nope", str(tmp_path / "x.raw")))
    assert not (tmp_path / "x.raw").exists() and list(tmp_path.glob(".*partial")) == []
    assert [p["name"] for p in json.loads(ok(cli("pool", "list", "--json")))] == ["default"]
