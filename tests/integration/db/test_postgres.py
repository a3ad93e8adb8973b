"""The same control plane on PostgreSQL: migrations, operations, events and capacity checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from tests.conftest import fake_settings
from tests.unit.api.helpers import make_image, make_vm, wait_operation

from bramble.api.app import create_app
from bramble.daemon import build_services

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pg_api(tmp_path: Path, postgres_url: str) -> AsyncIterator[httpx.AsyncClient]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    # A clean schema per test: drop everything the previous test (or migration) made.
    engine = create_async_engine(postgres_url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    await engine.dispose()
    services = await build_services(fake_settings(tmp_path / "state", database_url=postgres_url))
    try:
        transport = httpx.ASGITransport(app=create_app(services.cloud))
        headers = {"Authorization": f"Bearer {services.admin_token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://b.test", headers=headers) as client:
            yield client
    finally:
        await services.close()


async def test_vm_life_cycle_and_audit_on_postgres(pg_api: httpx.AsyncClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    await make_image(pg_api)
    vm = await make_vm(pg_api, "pg1")
    assert vm["state"] == "running"
    op = (await pg_api.post("/v1/vms/pg1/actions/stop", json={"force": True})).json()["operation"]
    assert (await wait_operation(pg_api, op["id"]))["status"] == "succeeded"
    assert (await pg_api.get("/v1/vms/pg1")).json()["state"] == "stopped"
    events = (await pg_api.get("/v1/events", params={"target": "vm/pg1", "since": before.isoformat()})).json()
    assert [e["action"] for e in events] == ["vm.create", "vm.stop"]
    assert datetime.fromisoformat(events[0]["time"]) >= before
    duplicate = await pg_api.post(
        "/v1/vms", json={"name": "pg1", "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1}
    )
    assert duplicate.status_code == 409


async def test_concurrent_creates_get_one_name_and_distinct_displays_on_postgres(pg_api: httpx.AsyncClient) -> None:
    await make_image(pg_api)
    statuses: list[int] = []

    async def create(name: str) -> None:
        body = {"name": name, "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1}
        statuses.append((await pg_api.post("/v1/vms", json=body)).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(create, f"p{i}")
        for _ in range(3):
            tg.start_soon(create, "same")
    assert statuses.count(202) == 7 and statuses.count(409) == 2
    with anyio.fail_after(10):
        while any(v["state"] == "creating" for v in (await pg_api.get("/v1/vms")).json()):
            await anyio.sleep(0.02)
    vms = (await pg_api.get("/v1/vms")).json()
    assert len({v["vnc"] for v in vms}) == 7
