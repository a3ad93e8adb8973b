"""The NoCloud seed ISO, read back with pycdlib through each of its name spaces."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest

from bramble.compute.driver import CloudInit, NicAttachment
from bramble.compute.seed import build_seed_iso

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfEzKZWHMy8m0yN7wdNJh3EDbAF2cuxy2JcUXhOYPgw me@laptop"


def read(iso: pycdlib.PyCdlib, **where: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **where)
    return out.getvalue()


def nic(mac: str) -> NicAttachment:
    return NicAttachment(
        nic_id="n", network_id="net", tap="t", bridge="b", mac=mac, address="10.0.0.2", cidr="10.0.0.0/24",
        gateway="10.0.0.1",
    )  # fmt: skip


def test_seed_holds_meta_data_user_data_and_network_config(tmp_path: Path) -> None:
    user_data = "#cloud-config\nruncmd:\n  - echo h\u00e9llo\n"
    data = CloudInit(instance_id="i-123", hostname="web1", public_keys=(KEY,), user_data=user_data)
    path = build_seed_iso(tmp_path / "seeds" / "vm.iso", data, [nic("52:54:00:00:00:01"), nic("52:54:00:00:00:02")])
    assert not list(path.parent.glob(".*partial"))
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()
        meta = json.loads(read(iso, rr_path="/meta-data"))
        assert meta == {"instance-id": "i-123", "local-hostname": "web1", "public-keys": [KEY]}
        assert read(iso, rr_path="/user-data").decode() == user_data
        assert read(iso, joliet_path="/user-data").decode() == user_data
        network = json.loads(read(iso, rr_path="/network-config"))
        assert network["version"] == 2
        assert network["ethernets"]["eth1"] == {
            "match": {"macaddress": "52:54:00:00:00:02"}, "set-name": "eth1", "dhcp4": True,
        }  # fmt: skip
    finally:
        iso.close()


def test_seed_without_key_user_data_or_nics(tmp_path: Path) -> None:
    path = build_seed_iso(tmp_path / "vm.iso", CloudInit(instance_id="i-9", hostname="bare"))
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert json.loads(read(iso, rr_path="/meta-data")) == {"instance-id": "i-9", "local-hostname": "bare"}
        assert read(iso, rr_path="/user-data") == b""
        with pytest.raises(pycdlib.pycdlibexception.PyCdlibInvalidInput):
            read(iso, rr_path="/network-config")
    finally:
        iso.close()


def test_rebuild_replaces_the_old_seed(tmp_path: Path) -> None:
    path = tmp_path / "vm.iso"
    build_seed_iso(path, CloudInit(instance_id="i-1", hostname="a", user_data="one"))
    build_seed_iso(path, CloudInit(instance_id="i-1", hostname="a", user_data="two"))
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert read(iso, rr_path="/user-data") == b"two"
    finally:
        iso.close()
