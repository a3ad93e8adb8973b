"""`bramble keypair` against the real API app on fake drivers."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.unit.cli.test_cli_contract import ok, real_api

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
