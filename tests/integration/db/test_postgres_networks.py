"""IPAM on PostgreSQL, where writers really run side by side: the advisory lock and the unique
keys must still give every NIC its own address and let only one of two overlapping networks in."""

from __future__ import annotations

import anyio
import httpx
import pytest
from tests.integration.db.test_postgres import pg_api
from tests.unit.api.helpers import make_image, wait_operation

pytestmark = pytest.mark.anyio

__all__ = ["pg_api"]


async def test_concurrent_nic_creates_and_overlapping_networks_on_postgres(pg_api: httpx.AsyncClient) -> None:
    net_statuses: list[int] = []

    async def create_net(name: str, cidr: str) -> None:
        net_statuses.append((await pg_api.post("/v1/networks", json={"name": name, "cidr": cidr})).status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(create_net, "wide", "10.70.0.0/16")
        tg.start_soon(create_net, "narrow", "10.70.1.0/24")
    assert sorted(net_statuses) == [201, 409]
    [net] = (await pg_api.get("/v1/networks")).json()

    await make_image(pg_api)
    accepted: list[str] = []

    async def create_vm(i: int) -> None:
        body = {"name": f"n{i}", "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1}
        response = await pg_api.post("/v1/vms", json={**body, "nics": [{"network": net["name"]}]})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["operation"]["id"])

    async with anyio.create_task_group() as tg:
        for i in range(25):
            tg.start_soon(create_vm, i)
    for op_id in accepted:
        assert (await wait_operation(pg_api, op_id, deadline=60))["status"] == "succeeded"
    nics = [n for vm in (await pg_api.get("/v1/vms")).json() for n in vm["nics"]]
    assert len(nics) == 25
    assert len({n["address"] for n in nics}) == 25 and len({n["mac"] for n in nics}) == 25


async def test_quarantine_on_postgres(pg_api: httpx.AsyncClient) -> None:
    assert (await pg_api.post("/v1/networks", json={"name": "q", "cidr": "10.71.0.0/24"})).status_code == 201
    await make_image(pg_api)
    body = {"image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1, "nics": [{"network": "q"}]}
    created = await pg_api.post("/v1/vms", json={"name": "a", **body})
    assert (await wait_operation(pg_api, created.json()["operation"]["id"]))["status"] == "succeeded"
    address = (await pg_api.get("/v1/vms/a")).json()["nics"][0]["address"]
    deleted = await pg_api.delete("/v1/vms/a")
    assert (await wait_operation(pg_api, deleted.json()["operation"]["id"]))["status"] == "succeeded"
    fixed = {**body, "nics": [{"network": "q", "address": address}]}
    refused = await pg_api.post("/v1/vms", json={"name": "b", **fixed})
    assert refused.status_code == 409 and "quarantined until" in refused.json()["error"]["message"]
    other = await pg_api.post("/v1/vms", json={"name": "c", **body})
    assert (await wait_operation(pg_api, other.json()["operation"]["id"]))["status"] == "succeeded"
    assert (await pg_api.get("/v1/vms/c")).json()["nics"][0]["address"] != address
