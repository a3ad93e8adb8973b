"""`bramble keypair` against the real API app on fake drivers."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.unit.cli.test_cli_contract import QCOW2, ok, real_api

__all__ = ["real_api"]  # the fixture, imported so pytest finds it here


def test_keypair_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    created = cli("keypair", "create", "k1")
    private_pem = ok(created)
    private = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert "not stored" in created.stderr
    generated = json.loads(ok(cli("keypair", "create", "k2", "--json")))
    assert generated["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    public = tmp_path / "id.pub"
    line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public.write_text(line.decode() + " me@laptop\n")
    imported = json.loads(ok(cli("keypair", "import", "mine", str(public), "--json")))
    assert imported["public_key"] == line.decode() + " me@laptop"
    listed = ok(cli("keypair", "list"))
    assert "k1" in listed and "mine" in listed and imported["fingerprint"] in listed
    assert "SHA256:" in ok(cli("keypair", "show", "mine"))

    assert "already exists" in error_line(cli("keypair", "import", "mine", str(public)))
    assert str(tmp_path / "nope.pub") in error_line(cli("keypair", "import", "x", str(tmp_path / "nope.pub")))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    assert "public key must start with" in error_line(cli("keypair", "import", "x", str(garbage)))

    ok(cli("keypair", "delete", "mine"))
    assert "not found" in error_line(cli("keypair", "delete", "mine"))
    assert [k["name"] for k in json.loads(ok(cli("keypair", "list", "--json")))] == ["k1", "k2"]


def test_vm_create_with_key_and_user_data(real_api, cli, error_line, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    ok(cli("image", "import", str(disk), "-n", "tiny", "--kernel", str(kernel)))
    ok(cli("keypair", "create", "k"))
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nhostname: w\n")
    size = ("--cpus", "1", "--memory", "64", "--disk-size", "1")
    vm = json.loads(ok(cli("vm", "create", "w", "-i", "tiny", *size, "--key", "k", "--user-data", str(user_data),
                           "--json")))  # fmt: skip
    assert (vm["key_name"], vm["has_user_data"]) == ("k", True)
    shown = ok(cli("vm", "show", "w"))
    assert "key" in shown and "user-data" in shown

    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    assert f"{big}: 65537 bytes" in error_line(cli("vm", "create", "v", "-i", "tiny", *size, "--user-data", str(big)))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in error_line(cli("vm", "create", "v", "-i", "tiny", *size, "--user-data", str(binary)))
    missing = tmp_path / "missing"
    assert str(missing) in error_line(cli("vm", "create", "v", "-i", "tiny", *size, "--user-data", str(missing)))
    assert "keypair 'nope' not found" in error_line(cli("vm", "create", "v", "-i", "tiny", *size, "--key", "nope"))
