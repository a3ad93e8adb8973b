"""Bad input gets a 4xx with a message a person can act on, and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.unit.api.helpers import make_image

pytestmark = pytest.mark.anyio

VM = {"name": "v", "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1}


def _message(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"image": "nope"}, 404, "image 'nope' not found"),
        ({"flavor": "huge", "cpus": None}, 404, "flavor 'huge' not found"),
        ({"memory_mib": 0}, 422, "memory_mib"),
        ({"memory_mib": 16}, 422, "at least 64 MiB"),
        ({"arch": "vax"}, 422, "unknown architecture 'vax'"),
        ({"arch": "aarch64"}, 422, "is for x86_64"),
        ({"name": "bad name!"}, 422, "name"),
        ({"cpus": None, "memory_mib": None, "disk_gib": None}, 422, "give a flavor"),
        ({"colour": "red"}, 422, "colour: unknown field"),
    ],
)
async def test_vm_create_rejects(api: httpx.AsyncClient, change: dict, status: int, words: str) -> None:
    await make_image(api)
    response = await api.post("/v1/vms", json={**VM, **change})
    assert response.status_code == status, response.text
    assert words in _message(response)
    assert (await api.get("/v1/vms")).json() == []


async def test_duplicate_vm_name(api: httpx.AsyncClient) -> None:
    await make_image(api)
    assert (await api.post("/v1/vms", json=VM)).status_code == 202
    again = await api.post("/v1/vms", json=VM)
    assert again.status_code == 409
    assert "already exists" in _message(again)


async def test_malformed_json(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/vms", content=b'{"name": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "malformed JSON" in _message(response)


async def test_missing_and_wrong_token(api: httpx.AsyncClient) -> None:
    anonymous = await api.get("/v1/vms", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and "missing API token" in _message(anonymous)
    wrong = await api.get("/v1/vms", headers={"Authorization": "Bearer brt_nope"})
    assert wrong.status_code == 401 and "invalid API token" in _message(wrong)
    assert (await api.get("/v1/health", headers={"Authorization": ""})).status_code == 200


async def test_unknown_things(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/vms/ghost")).status_code == 404
    assert (await api.post("/v1/vms/ghost/actions/start")).status_code == 404
    await make_image(api)
    assert (await api.post("/v1/vms", json=VM)).status_code == 202
    bad_action = await api.post("/v1/vms/v/actions/explode")
    assert bad_action.status_code == 422 and "unknown action" in _message(bad_action)
    assert (await api.get("/v1/operations/nope")).status_code == 404
    assert "no such endpoint" in _message(await api.get("/v2/things"))


async def test_rejections_are_audited(api: httpx.AsyncClient) -> None:
    await api.post("/v1/vms", json={**VM, "image": "nope"})
    events = (await api.get("/v1/events", params={"target": "vm/v"})).json()
    assert events[-1]["outcome"] == "rejected" and "not found" in events[-1]["message"]


async def test_image_errors(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/images", json={"name": "x", "arch": "pdp11"})).status_code == 422
    created = await api.post("/v1/images", json={"name": "x"})
    assert created.status_code == 201
    no_disk = await api.post("/v1/images/x/activate")
    assert no_disk.status_code == 422 and "no disk part" in _message(no_disk)
    bad_part = await api.put("/v1/images/x/data/bootloader", content=b"x")
    assert bad_part.status_code == 422 and "unknown image part" in _message(bad_part)
    assert (await api.post("/v1/images", json={"name": "x"})).status_code == 409
    bad_url = await api.post("/v1/images", json={"name": "y", "source_url": "ftp://example/x"})
    assert bad_url.status_code == 422 and "http://" in _message(bad_url)
