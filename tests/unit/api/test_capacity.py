"""Concurrent creates cannot overcommit a node: capacity is checked where the row is written."""

from __future__ import annotations

import anyio
import httpx
import pytest

from bramble.daemon import Services
from tests.unit.api.helpers import make_image

pytestmark = pytest.mark.anyio


async def test_concurrent_creates_respect_memory(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    node = (await api.get("/v1/nodes")).json()[0]
    per_vm = node["memory_mib"] // 4 + 1  # room for 3, not 4
    statuses: list[int] = []

    async def create(i: int) -> None:
        body = {"name": f"m{i}", "image": "tiny", "cpus": 1, "memory_mib": per_vm, "disk_gib": 1}
        response = await api.post("/v1/vms", json=body)
        statuses.append(response.status_code)
        if response.status_code == 409:
            assert "MiB free" in response.json()["error"]["message"]

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(create, i)
    assert sorted(statuses) == [202] * 3 + [409] * 5


async def test_vnc_displays_reuse_the_lowest_gap(api: httpx.AsyncClient, services: Services) -> None:
    from tests.unit.api.helpers import make_vm, wait_operation

    await make_image(api)
    for name in ("d0", "d1", "d2"):
        await make_vm(api, name)
    op = (await api.delete("/v1/vms/d1")).json()["operation"]
    assert (await wait_operation(api, op["id"]))["status"] == "succeeded"
    again = await make_vm(api, "d3")
    d1_port = 5901
    assert again["vnc"] == f"127.0.0.1:{d1_port}"
    assert (await make_vm(api, "d4"))["vnc"] == "127.0.0.1:5903"
