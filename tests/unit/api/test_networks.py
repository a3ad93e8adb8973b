"""VM networks and NICs through the real API on fake compute, storage and network drivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import func, select, update

from bramble.agent.network import NodeNetworks
from bramble.api.app import create_app
from bramble.daemon import Services, build_services
from bramble.db.models import IpReleaseRow, NetworkRow, NicRow, VmRow, utcnow
from bramble.network.fake import FakeNetworkDriver
from tests.conftest import fake_settings
from tests.unit.api.helpers import make_image, make_vm, wait_operation

pytestmark = pytest.mark.anyio


def node_networks(services: Services) -> NodeNetworks:
    assert services.agent is not None and services.agent.networks is not None
    return services.agent.networks


def fake_driver(services: Services) -> FakeNetworkDriver:
    driver = node_networks(services).driver
    assert isinstance(driver, FakeNetworkDriver)
    return driver


async def make_net(api: httpx.AsyncClient, name: str = "lan", cidr: str = "10.20.0.0/24", **extra: object) -> dict:
    response = await api.post("/v1/networks", json={"name": name, "cidr": cidr, **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def delete_vm(api: httpx.AsyncClient, name: str) -> None:
    response = await api.delete(f"/v1/vms/{name}")
    assert response.status_code == 202, response.text
    assert (await wait_operation(api, response.json()["operation"]["id"]))["status"] == "succeeded"


async def count(services: Services, model: type) -> int:
    async with services.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_network_create_show_list_delete(api: httpx.AsyncClient) -> None:
    net = await make_net(api, dns=["10.20.0.1", "9.9.9.9"], nat=True)
    assert net["gateway"] == "10.20.0.1"
    assert net["bridge"].startswith("bb-") and len(net["bridge"]) <= 15
    assert net["dns"] == ["10.20.0.1", "9.9.9.9"] and net["nat"] is True
    other = await make_net(api, "dmz", "10.30.0.0/28", gateway="10.30.0.14")
    assert other["gateway"] == "10.30.0.14"
    listed = (await api.get("/v1/networks")).json()
    assert [n["name"] for n in listed] == ["dmz", "lan"]
    shown = (await api.get(f"/v1/networks/{net['id']}")).json()
    assert shown["name"] == "lan" and shown["ports"] == []
    assert (await api.delete("/v1/networks/lan")).status_code == 204
    assert (await api.get("/v1/networks/lan")).status_code == 404
    events = (await api.get("/v1/events", params={"target": "network/lan"})).json()
    assert [e["action"] for e in events if e["outcome"] == "ok"] == ["network.create", "network.delete"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"cidr": "10.20.0.0/33"}, 422, "CIDR"),
        ({"cidr": "not-a-net"}, 422, "not-a-net"),
        ({"cidr": "10.20.0.5/24"}, 422, "host bits"),
        ({"cidr": "10.20.0.0"}, 422, "prefix"),
        ({"cidr": "10.40.0.0/24", "gateway": "10.41.0.1"}, 422, "10.41.0.1"),
        ({"cidr": "10.40.0.0/24", "gateway": "10.40.0.255"}, 422, "gateway"),
        ({"cidr": "10.20.0.128/25"}, 409, "overlaps"),
        ({"cidr": "10.0.0.0/8"}, 409, "'lan'"),
        ({"cidr": "10.40.0.0/24", "dns": ["nine"]}, 422, "DNS"),
        ({"cidr": "10.40.0.0/24", "vlan": 7}, 422, "uplink"),
        ({"cidr": "10.40.0.0/24", "uplink": "eth0; rm"}, 422, "uplink"),
        ({"cidr": "10.40.0.0/24", "vlan": 5000, "uplink": "eth0"}, 422, "vlan"),
        ({"cidr": "10.40.0.0/24", "bogus": 1}, 422, "unknown field"),
    ],
)
async def test_bad_network_input_is_4xx_and_makes_nothing(
    api: httpx.AsyncClient, services: Services, body: dict, status: int, words: str
) -> None:
    await make_net(api)
    response = await api.post("/v1/networks", json={"name": "bad", **body})
    assert response.status_code == status, response.text
    assert words.lower() in response.json()["error"]["message"].lower()
    assert await count(services, NetworkRow) == 1


async def test_duplicate_network_name_is_409(api: httpx.AsyncClient) -> None:
    await make_net(api)
    response = await api.post("/v1/networks", json={"name": "lan", "cidr": "10.99.0.0/24"})
    assert response.status_code == 409 and "already exists" in response.json()["error"]["message"]


async def test_vm_nics_get_addresses_macs_taps_and_dhcp_reservations(
    api: httpx.AsyncClient, services: Services
) -> None:
    await make_image(api)
    lan = await make_net(api)
    dmz = await make_net(api, "dmz", "10.30.0.0/24")
    vm = await make_vm(api, "web", nics=[{"network": "lan"}, {"network": "dmz", "address": "10.30.0.50"}])
    assert [(n["network"], n["address"]) for n in vm["nics"]] == [("lan", "10.20.0.2"), ("dmz", "10.30.0.50")]
    macs = [n["mac"] for n in vm["nics"]]
    assert len(set(macs)) == 2 and all(m.startswith("02:b7:") for m in macs)

    driver = fake_driver(services)
    assert set(driver.networks) == {lan["bridge"], dmz["bridge"]}
    assert {t: n.bridge for t, n in driver.taps.items()} == {
        vm["nics"][0]["tap"]: lan["bridge"],
        vm["nics"][1]["tap"]: dmz["bridge"],
    }
    assert {p.tap: (p.mac, str(p.ip)) for p in driver.policies.values()} == {
        n["tap"]: (n["mac"], n["address"]) for n in vm["nics"]
    }
    reservations = node_networks(services).reservations()
    assert {k: {m: str(r.ip) for m, r in v.items()} for k, v in reservations.items()} == {
        lan["id"]: {macs[0]: "10.20.0.2"},
        dmz["id"]: {macs[1]: "10.30.0.50"},
    }
    # The compute driver got the NICs in guest order.
    spec = services.agent.compute.vms[vm["id"]].spec  # type: ignore[union-attr,attr-defined]
    assert [(n.tap, n.mac, n.address) for n in spec.nics] == [(n["tap"], n["mac"], n["address"]) for n in vm["nics"]]

    shown = (await api.get("/v1/networks/lan")).json()
    assert shown["ports"] == [{"vm": "web", "address": "10.20.0.2", "mac": macs[0]}]
    assert [n["nics"] for n in (await api.get("/v1/vms")).json()] == [vm["nics"]]


async def test_vm_delete_unplugs_and_last_nic_takes_the_bridge(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    lan = await make_net(api)
    a = await make_vm(api, "a", nics=[{"network": "lan"}])
    await make_vm(api, "b", nics=[{"network": "lan"}])
    driver = fake_driver(services)
    await delete_vm(api, "a")
    assert a["nics"][0]["tap"] not in driver.taps and lan["bridge"] in driver.networks
    await delete_vm(api, "b")
    assert driver.taps == {} and driver.networks == {} and driver.policies == {}
    assert node_networks(services).reservations() == {}


async def test_bad_nic_requests_are_4xx_and_leave_nothing(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api)
    await make_vm(api, "first", nics=[{"network": "lan", "address": "10.20.0.9"}])
    cases = [
        ({"network": "nope"}, 404, "network 'nope' not found"),
        ({"network": "lan", "address": "10.20.0.9"}, 409, "already in use"),
        ({"network": "lan", "address": "10.21.0.9"}, 422, "outside"),
        ({"network": "lan", "address": "10.20.0.1"}, 422, "gateway"),
        ({"network": "lan", "address": "10.20.0.255"}, 422, "broadcast"),
        ({"network": "lan", "address": "ten"}, 422, "not an IPv4 address"),
    ]
    for nic, status, words in cases:
        body = {"name": "second", "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1, "nics": [nic]}
        response = await api.post("/v1/vms", json=body)
        assert response.status_code == status, (nic, response.text)
        assert words in response.json()["error"]["message"], (nic, response.text)
    # a good NIC followed by a bad one: the good one's address is not kept either
    body = {
        "name": "second",
        "image": "tiny",
        "cpus": 1,
        "memory_mib": 128,
        "disk_gib": 1,
        "nics": [{"network": "lan"}, {"network": "lan", "address": "10.20.0.9"}],
    }
    assert (await api.post("/v1/vms", json=body)).status_code == 409
    assert await count(services, VmRow) == 1 and await count(services, NicRow) == 1
    rejected = (await api.get("/v1/events", params={"target": "vm/second"})).json()
    assert len(rejected) == len(cases) + 1 and {e["outcome"] for e in rejected} == {"rejected"}


async def test_network_in_use_cannot_be_deleted(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api)
    for name in ("db1", "app1"):
        await make_vm(api, name, nics=[{"network": "lan"}])
    response = await api.delete("/v1/networks/lan")
    assert response.status_code == 409
    assert "app1, db1" in response.json()["error"]["message"]
    assert await count(services, NetworkRow) == 1
    for name in ("db1", "app1"):
        await delete_vm(api, name)
    assert (await api.delete("/v1/networks/lan")).status_code == 204
    assert await count(services, IpReleaseRow) == 0


@pytest.fixture
async def roomy(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """A node that fits 50 small VMs on two host CPUs."""
    compute = {"driver": "fake", "stop_timeout_seconds": 1, "cpu_overcommit": 64}
    services = await build_services(fake_settings(tmp_path / "state", compute=compute))
    headers = {"Authorization": f"Bearer {services.admin_token}"}
    try:
        transport = httpx.ASGITransport(app=create_app(services.cloud))
        async with httpx.AsyncClient(transport=transport, base_url="http://bramble.test", headers=headers) as api:
            yield api, services
    finally:
        await services.close()


async def test_fifty_concurrent_creates_get_fifty_distinct_addresses(
    roomy: tuple[httpx.AsyncClient, Services],
) -> None:
    api, services = roomy
    await make_image(api)
    await make_net(api, cidr="10.50.0.0/24")
    accepted: list[str] = []

    async def create(i: int) -> None:
        body = {
            "name": f"c{i}",
            "image": "tiny",
            "cpus": 1,
            "memory_mib": 64,
            "disk_gib": 1,
            "nics": [{"network": "lan"}],
        }
        response = await api.post("/v1/vms", json=body)
        assert response.status_code == 202, response.text
        accepted.append(response.json()["operation"]["id"])

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(create, i)
    for op_id in accepted:
        assert (await wait_operation(api, op_id, deadline=60))["status"] == "succeeded"
    async with services.db.read() as session:
        rows = (await session.execute(select(NicRow.address, NicRow.mac))).all()
    addresses = [IPv4Address(a) for a, _ in rows]
    assert len(rows) == 50 and len(set(addresses)) == 50 and len({m for _, m in rows}) == 50
    assert sorted(addresses) == [IPv4Address("10.50.0.2") + i for i in range(50)]
    assert len(fake_driver(services).taps) == 50


async def test_freed_address_waits_out_its_quarantine(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api, cidr="10.60.0.0/29")  # hosts .1-.6; .1 is the gateway: five for VMs
    vms = [await make_vm(api, f"q{i}", nics=[{"network": "lan"}]) for i in range(5)]
    freed = vms[2]["nics"][0]["address"]
    await delete_vm(api, "q2")

    body = {"name": "late", "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1}
    asked = await api.post("/v1/vms", json={**body, "nics": [{"network": "lan", "address": freed}]})
    assert asked.status_code == 409 and "quarantined until" in asked.json()["error"]["message"]
    any_free = await api.post("/v1/vms", json={**body, "nics": [{"network": "lan"}]})
    assert any_free.status_code == 409
    assert "no free address" in any_free.json()["error"]["message"]
    assert await count(services, VmRow) == 4

    # Ten minutes later (the default quarantine) the address comes back.
    async with services.db.write() as session:
        await session.execute(update(IpReleaseRow).values(freed_at=utcnow() - timedelta(seconds=601)))
    again = await make_vm(api, "late", nics=[{"network": "lan"}])
    assert again["nics"][0]["address"] == freed
    assert await count(services, IpReleaseRow) == 0


async def test_fresh_addresses_come_before_recycled_ones(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api)
    first = await make_vm(api, "one", nics=[{"network": "lan"}])
    await delete_vm(api, "one")
    async with services.db.write() as session:
        await session.execute(update(IpReleaseRow).values(freed_at=utcnow() - timedelta(hours=1)))
    second = await make_vm(api, "two", nics=[{"network": "lan"}])
    assert first["nics"][0]["address"] == "10.20.0.2" and second["nics"][0]["address"] == "10.20.0.3"


async def test_failed_start_unplugs_and_frees(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api)
    services.agent.compute.fail_start["broken"] = "qemu: could not open tap"  # type: ignore[union-attr,attr-defined]
    nics = [{"network": "lan", "address": "10.20.0.40"}]
    body = {"name": "broken", "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1, "nics": nics}
    response = await api.post("/v1/vms", json=body)
    assert response.status_code == 202
    assert (await wait_operation(api, response.json()["operation"]["id"]))["status"] == "failed"
    assert await count(services, NicRow) == 0 and await count(services, VmRow) == 0
    driver = fake_driver(services)
    assert driver.taps == {} and driver.networks == {}
    # The guest never ran, so its address is not quarantined: the retry gets it.
    assert await count(services, IpReleaseRow) == 0
    del services.agent.compute.fail_start["broken"]  # type: ignore[union-attr,attr-defined]
    retried = await make_vm(api, "broken", nics=nics)
    assert retried["nics"][0]["address"] == "10.20.0.40"


async def test_a_mac_already_taken_is_drawn_again(
    api: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bramble.core.networks as networks_module

    await make_image(api)
    await make_net(api)
    first = await make_vm(api, "one", nics=[{"network": "lan"}])
    taken = first["nics"][0]["mac"]
    draws = iter([taken, taken, "02:b7:00:00:00:99"])
    monkeypatch.setattr(networks_module, "new_mac", lambda _taken: next(draws))
    second = await make_vm(api, "two", nics=[{"network": "lan"}])
    assert second["nics"][0]["mac"] == "02:b7:00:00:00:99"
