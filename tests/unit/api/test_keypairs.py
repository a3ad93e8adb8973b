"""Keypairs through the real API: generate (private key once), import with validation, events, delete."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pycdlib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bramble.compute.driver import VmSpec
from bramble.compute.fake import FakeComputeDriver
from bramble.core.deps import find_by_ref
from bramble.core.keypairs import fingerprint
from bramble.daemon import Services
from bramble.db.models import VmRow
from tests.unit.api.helpers import make_image, make_vm
from tests.unit.api.test_networks import delete_vm

pytestmark = pytest.mark.anyio


def ed25519_line(comment: str = "me@laptop") -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return (
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " " + comment
    )


async def test_generate_returns_the_private_key_once(api: httpx.AsyncClient) -> None:
    created = await api.post("/v1/keypairs", json={"name": "k1"})
    assert created.status_code == 201, created.text
    key = created.json()
    private = serialization.load_ssh_private_key(key["private_key"].encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert key["public_key"] == derived.decode() + " bramble-k1"
    assert key["fingerprint"] == fingerprint(base64.b64decode(derived.split()[1]))
    shown = (await api.get("/v1/keypairs/k1")).json()
    assert shown["private_key"] is None and shown["public_key"] == key["public_key"]
    listed = (await api.get("/v1/keypairs")).json()
    assert [(k["name"], k["private_key"]) for k in listed] == [("k1", None)]
    events = (await api.get("/v1/events", params={"target": "keypair/k1"})).json()
    assert [e["action"] for e in events] == ["keypair.generate"]
    assert key["private_key"] not in str(events)


async def test_import_validates_and_normalises(api: httpx.AsyncClient) -> None:
    line = ed25519_line()
    created = await api.post("/v1/keypairs", json={"name": "mine", "public_key": f"\n  {line}  \n"})
    assert created.status_code == 201, created.text
    assert created.json()["public_key"] == line and created.json()["private_key"] is None
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_line = rsa_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert (await api.post("/v1/keypairs", json={"name": "rsa", "public_key": rsa_line})).status_code == 201

    duplicate = await api.post("/v1/keypairs", json={"name": "mine", "public_key": line})
    assert duplicate.status_code == 409 and "already exists" in duplicate.text
    bad = {
        "not ssh": "hello world",
        "two lines": f"{line}\n{line}",
        "bad base64": "ssh-ed25519 AAAA!!!!",
        "wrong type in blob": "ssh-ed25519 " + rsa_line.split()[1],
        "dsa": "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "empty": "",
    }
    for why, text in bad.items():
        response = await api.post("/v1/keypairs", json={"name": "bad", "public_key": text})
        assert response.status_code == 422, (why, response.text)
        assert response.json()["error"]["message"], why
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    small_line = small.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    response = await api.post("/v1/keypairs", json={"name": "small", "public_key": small_line})
    assert response.status_code == 422 and "1024 bits" in response.text
    assert (await api.post("/v1/keypairs", json={"name": "../x", "public_key": line})).status_code == 422
    assert (await api.post("/v1/keypairs", json={"name": "big", "public_key": "x" * 20000})).status_code == 422
    assert [k["name"] for k in (await api.get("/v1/keypairs")).json()] == ["mine", "rsa"]
    rejected = (await api.get("/v1/events", params={"target": "keypair/bad"})).json()
    assert rejected and all(e["outcome"] == "rejected" for e in rejected)


async def test_delete(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/keypairs", json={"name": "gone"})).status_code == 201
    assert (await api.delete("/v1/keypairs/gone")).status_code == 204
    assert (await api.get("/v1/keypairs/gone")).status_code == 404
    missing = await api.delete("/v1/keypairs/gone")
    assert missing.status_code == 404 and "keypair 'gone' not found" in missing.text
    actions = [e["action"] for e in (await api.get("/v1/events", params={"target": "keypair/gone"})).json()]
    assert "keypair.delete" in actions


async def test_vm_create_copies_the_key_and_keeps_user_data(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    key = (await api.post("/v1/keypairs", json={"name": "k"})).json()
    vm = await make_vm(api, "c1", key="k", user_data="#cloud-config\nhostname: c1\n")
    assert (vm["key_name"], vm["has_user_data"]) == ("k", True)
    assert (await api.delete("/v1/keypairs/k")).status_code == 204
    async with services.cloud.deps.db.read() as session:
        row = await find_by_ref(session, VmRow, "c1", "vm")
    assert row.ssh_public_key == key["public_key"]  # the VM keeps its copy
    assert row.user_data == "#cloud-config\nhostname: c1\n"
    plain = await make_vm(api, "c2")
    assert (plain["key_name"], plain["has_user_data"]) == (None, False)


async def test_vm_create_rejects_unknown_key_and_big_user_data(api: httpx.AsyncClient) -> None:
    await make_image(api)
    body = {"image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
    missing = await api.post("/v1/vms", json={**body, "name": "a", "key": "nope"})
    assert missing.status_code == 404 and "keypair 'nope' not found" in missing.text
    big = await api.post("/v1/vms", json={**body, "name": "b", "user_data": "x" * (64 * 1024 + 1)})
    assert big.status_code == 422
    wide = await api.post("/v1/vms", json={**body, "name": "c", "user_data": "\u00e9" * (40 * 1024)})
    assert wide.status_code == 422 and "at most 65536" in wide.text
    exact = await api.post("/v1/vms", json={**body, "name": "d", "user_data": "x" * (64 * 1024)})
    assert exact.status_code == 202, exact.text
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["d"]


def running_spec(services: Services, vm_id: str) -> VmSpec:
    assert services.agent is not None
    compute = services.agent.compute
    assert isinstance(compute, FakeComputeDriver)
    return compute.vms[vm_id].spec


async def test_agent_attaches_a_seed_cdrom_and_removes_it_on_delete(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    key = (await api.post("/v1/keypairs", json={"name": "k"})).json()
    vm = await make_vm(api, "seeded", key="k", user_data="marker\n")
    spec = running_spec(services, vm["id"])
    [seed] = [d for d in spec.disks if d.media == "cdrom"]
    assert seed.readonly and seed.format == "raw"
    assert seed.path == str(services.settings.state_dir / "seeds" / f"{vm['id']}.iso")
    iso = pycdlib.PyCdlib()
    iso.open(seed.path)
    try:
        meta = io.BytesIO()
        iso.get_file_from_iso_fp(meta, rr_path="/meta-data")
        assert json.loads(meta.getvalue()) == {
            "instance-id": vm["id"], "local-hostname": "seeded", "public-keys": [key["public_key"]],
        }  # fmt: skip
        user_data = io.BytesIO()
        iso.get_file_from_iso_fp(user_data, rr_path="/user-data")
        assert user_data.getvalue() == b"marker\n"
    finally:
        iso.close()
    plain = await make_vm(api, "plain")
    assert [d.media for d in running_spec(services, plain["id"]).disks] == ["disk"]  # no key, no user-data: no seed
    await delete_vm(api, "seeded")
    assert not Path(seed.path).exists()
