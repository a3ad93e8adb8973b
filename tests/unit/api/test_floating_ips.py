"""Floating IPs through the real API on fake compute, storage and network drivers.

The fake network driver compiles the same nft batch as the bridge driver, so a mapping it holds is one
the kernel would take; the kernel side itself is tested in tests/integration/network and tests/e2e.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import anyio
import httpx
import pytest
from sqlalchemy import select, update

from bramble.daemon import Services
from bramble.db.models import FloatingIpRow, IpReleaseRow, NicRow
from bramble.network.driver import FloatingIp, NetworkError
from tests.unit.api.helpers import make_image, make_vm, wait_operation
from tests.unit.api.test_networks import count, delete_vm, fake_driver, make_net

pytestmark = pytest.mark.anyio


async def make_fip(api: httpx.AsyncClient, network: str = "public", **extra: object) -> dict:
    response = await api.post("/v1/floating-ips", json={"network": network, **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def setup_cloud(api: httpx.AsyncClient) -> tuple[dict, dict, dict]:
    """An image, a private network with a running VM on it, and a public network with an uplink."""
    await make_image(api)
    lan = await make_net(api)
    public = await make_net(api, "public", "192.0.2.0/24", uplink="eth9")
    vm = await make_vm(api, "web", nics=[{"network": "lan"}])
    return lan, public, vm


async def events(api: httpx.AsyncClient, target: str) -> list[tuple[str, str]]:
    rows = (await api.get("/v1/events", params={"target": target})).json()
    return [(e["action"], e["outcome"]) for e in rows]


async def test_create_list_show_delete_with_shared_ipam(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api, "public", "192.0.2.0/24")
    # a NIC holds .2, so the first floating IP is .3; a fixed one is taken as asked
    await make_vm(api, "holder", nics=[{"network": "public"}], start=False)
    first = await make_fip(api)
    fixed = await make_fip(api, address="192.0.2.50")
    assert (first["address"], first["network"], first["vm"]) == ("192.0.2.3", "public", None)
    assert fixed["address"] == "192.0.2.50"
    # ... and a NIC created afterwards skips both
    other = await make_vm(api, "other", nics=[{"network": "public"}], start=False)
    assert other["nics"][0]["address"] == "192.0.2.4"

    listed = (await api.get("/v1/floating-ips")).json()
    assert [f["address"] for f in listed] == ["192.0.2.3", "192.0.2.50"]
    assert (await api.get("/v1/floating-ips/192.0.2.50")).json()["id"] == fixed["id"]
    assert (await api.get(f"/v1/floating-ips/{fixed['id']}")).json()["address"] == "192.0.2.50"

    assert (await api.delete("/v1/floating-ips/192.0.2.50")).status_code == 204
    assert (await api.get("/v1/floating-ips/192.0.2.50")).status_code == 404
    assert await events(api, "fip/192.0.2.50") == [("fip.create", "ok"), ("fip.delete", "ok")]
    assert await events(api, "fip/192.0.2.3") == [("fip.create", "ok")]

    # released into quarantine: asked again it is refused with its end time; the next one skips it
    again = await api.post("/v1/floating-ips", json={"network": "public", "address": "192.0.2.50"})
    assert again.status_code == 409 and "quarantined until" in again.json()["error"]["message"]
    async with services.db.read() as session:
        assert "192.0.2.50" in (await session.scalars(select(IpReleaseRow.address))).all()
    assert (await make_fip(api))["address"] == "192.0.2.5"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"network": "ghost"}, 404, "network 'ghost' not found"),
        ({"network": "public", "address": "198.51.100.7"}, 422, "outside 192.0.2.0/24"),
        ({"network": "public", "address": "192.0.2.1"}, 422, "gateway"),
        ({"network": "public", "address": "192.0.2.255"}, 422, "broadcast"),
        ({"network": "public", "address": "192.0.2.2"}, 409, "already in use"),  # a NIC's
        ({"network": "public", "address": "192.0.2.3"}, 409, "already in use"),  # another floating IP's
        ({"network": "public", "address": "nine"}, 422, "not an IPv4 address"),
        ({"network": "public", "bogus": 1}, 422, "unknown field"),
        ({}, 422, "network"),
    ],
)
async def test_bad_create_is_4xx_and_makes_nothing(
    api: httpx.AsyncClient, services: Services, body: dict, status: int, words: str
) -> None:
    await make_image(api)
    await make_net(api, "public", "192.0.2.0/24")
    await make_vm(api, "holder", nics=[{"network": "public"}], start=False)
    await make_fip(api)
    response = await api.post("/v1/floating-ips", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert await count(services, FloatingIpRow) == 1


async def test_full_public_network_is_409(api: httpx.AsyncClient, services: Services) -> None:
    await make_net(api, "tiny", "192.0.2.0/30")  # one assignable address
    await make_fip(api, "tiny")
    response = await api.post("/v1/floating-ips", json={"network": "tiny"})
    assert response.status_code == 409 and "no free address" in response.json()["error"]["message"]
    assert await count(services, FloatingIpRow) == 1


async def test_attach_maps_on_the_node_and_detach_unmaps(api: httpx.AsyncClient, services: Services) -> None:
    lan, _, _ = await setup_cloud(api)
    fip = await make_fip(api)
    attached = await api.post(f"/v1/floating-ips/{fip['address']}/attach", json={"vm": "web"})
    assert attached.status_code == 200, attached.text
    body = attached.json()
    assert (body["vm"], body["nic"], body["private_address"], body["node"]) == ("web", 0, "10.20.0.2", "node-1")
    driver = fake_driver(services)
    assert driver.floating == [
        FloatingIp(IPv4Address("192.0.2.2"), IPv4Address("10.20.0.2"), lan["bridge"], uplink="eth9")
    ]
    shown = (await api.get("/v1/vms/web")).json()
    assert shown["nics"][0]["floating_ip"] == "192.0.2.2"

    detached = await api.post("/v1/floating-ips/192.0.2.2/detach")
    assert detached.status_code == 200 and detached.json()["vm"] is None
    assert driver.floating == []
    assert (await api.get("/v1/vms/web")).json()["nics"][0]["floating_ip"] is None
    again = await api.post("/v1/floating-ips/192.0.2.2/detach")
    assert again.status_code == 409 and "not attached" in again.json()["error"]["message"]
    assert await events(api, "fip/192.0.2.2") == [
        ("fip.create", "ok"),
        ("fip.attach", "ok"),
        ("fip.detach", "ok"),
        ("fip.detach", "rejected"),
    ]


async def test_bad_attach_is_4xx_and_changes_nothing(api: httpx.AsyncClient, services: Services) -> None:
    await setup_cloud(api)
    await make_vm(api, "bare")  # no NIC
    await make_vm(api, "onpublic", nics=[{"network": "public"}, {"network": "lan"}])
    fip = await make_fip(api)
    other = await make_fip(api)
    attach = f"/v1/floating-ips/{fip['address']}/attach"
    cases = [
        ("/v1/floating-ips/192.0.2.99/attach", {"vm": "web"}, 404, "floating IP '192.0.2.99' not found"),
        (attach, {"vm": "ghost"}, 404, "VM 'ghost' not found"),
        (attach, {"vm": "bare"}, 422, "has no NIC"),
        (attach, {"vm": "web", "nic": 3}, 422, "has no nic3"),
        (attach, {"vm": "web", "nic": -1}, 422, "nic"),
        (attach, {"vm": "onpublic", "nic": 0}, 422, "another network"),
        (attach, {"vm": "web", "extra": True}, 422, "unknown field"),
    ]
    driver = fake_driver(services)
    for path, body, status, words in cases:
        response = await api.post(path, json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["error"]["message"], (body, response.text)
    assert driver.floating == []
    async with services.db.read() as session:
        assert (await session.scalars(select(FloatingIpRow.nic_id))).all() == [None, None]

    # without --nic, the first NIC on another network than the floating IP's
    auto = await api.post(attach, json={"vm": "onpublic"})
    assert auto.status_code == 200 and auto.json()["nic"] == 1
    twice = await api.post(attach, json={"vm": "web"})
    assert twice.status_code == 409 and "already attached to VM 'onpublic'" in twice.json()["error"]["message"]
    same_nic = await api.post(f"/v1/floating-ips/{other['address']}/attach", json={"vm": "onpublic", "nic": 1})
    assert same_nic.status_code == 409 and f"already has floating IP {fip['address']}" in same_nic.text
    assert [f.public_ip for f in driver.floating] == [IPv4Address(fip["address"])]


async def test_node_that_refuses_leaves_it_detached(
    api: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_cloud(api)
    fip = await make_fip(api)
    driver = fake_driver(services)

    def refuse(floating: object) -> None:
        raise NetworkError("uplink eth9 for floating IP 192.0.2.2 does not exist")

    monkeypatch.setattr(driver, "apply_floating_ips", refuse)
    response = await api.post(f"/v1/floating-ips/{fip['address']}/attach", json={"vm": "web"})
    assert response.status_code == 500 and "eth9" in response.json()["error"]["message"]
    assert (await api.get(f"/v1/floating-ips/{fip['address']}")).json()["vm"] is None
    assert await events(api, f"fip/{fip['address']}") == [("fip.create", "ok"), ("fip.attach", "failed")]


async def test_delete_refused_while_attached_unless_detach(api: httpx.AsyncClient, services: Services) -> None:
    await setup_cloud(api)
    fip = await make_fip(api)
    assert (await api.post(f"/v1/floating-ips/{fip['address']}/attach", json={"vm": "web"})).status_code == 200
    refused = await api.delete(f"/v1/floating-ips/{fip['address']}")
    assert refused.status_code == 409 and "attached to VM 'web'" in refused.json()["error"]["message"]
    assert len(fake_driver(services).floating) == 1
    gone = await api.delete(f"/v1/floating-ips/{fip['address']}", params={"detach": "true"})
    assert gone.status_code == 204
    assert fake_driver(services).floating == [] and await count(services, FloatingIpRow) == 0
    assert await events(api, f"fip/{fip['address']}") == [
        ("fip.create", "ok"),
        ("fip.attach", "ok"),
        ("fip.delete", "rejected"),
        ("fip.delete", "ok"),
    ]


async def test_deleting_the_vm_detaches_but_keeps_the_address(api: httpx.AsyncClient, services: Services) -> None:
    await setup_cloud(api)
    fip = await make_fip(api)
    assert (await api.post(f"/v1/floating-ips/{fip['address']}/attach", json={"vm": "web"})).status_code == 200
    await delete_vm(api, "web")
    kept = (await api.get(f"/v1/floating-ips/{fip['address']}")).json()
    assert kept["vm"] is None and kept["private_address"] is None
    assert fake_driver(services).floating == []
    assert ("fip.detach", "ok") in await events(api, f"fip/{fip['address']}")
    # it can be attached to the next VM
    await make_vm(api, "next", nics=[{"network": "lan"}])
    assert (await api.post(f"/v1/floating-ips/{fip['address']}/attach", json={"vm": "next"})).status_code == 200
    # the public network cannot go while it holds the address
    refused = await api.delete("/v1/networks/public")
    assert refused.status_code == 409 and fip["address"] in refused.json()["error"]["message"]


async def test_stopped_vm_gets_its_mapping_when_it_starts(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api)
    await make_net(api, "public", "192.0.2.0/24")
    await make_vm(api, "later", nics=[{"network": "lan"}], start=False)
    fip = await make_fip(api)
    assert (await api.post(f"/v1/floating-ips/{fip['address']}/attach", json={"vm": "later"})).status_code == 200
    driver = fake_driver(services)
    assert driver.floating == []  # no tap here yet: nothing to map to
    started = await api.post("/v1/vms/later/actions/start")
    assert (await wait_operation(api, started.json()["operation"]["id"]))["status"] == "succeeded"
    assert [(str(f.public_ip), str(f.private_ip), f.uplink) for f in driver.floating] == [
        (fip["address"], "10.20.0.2", None)
    ]


async def test_reconcile_applies_what_the_database_says(api: httpx.AsyncClient, services: Services) -> None:
    """A change the node did not hear about (it was down) is applied by its next reconcile pass."""
    await setup_cloud(api)
    fip = await make_fip(api)
    async with services.db.write() as session:
        nic_id = (await session.scalars(select(NicRow.id))).one()
        await session.execute(update(FloatingIpRow).values(nic_id=nic_id))
    driver = fake_driver(services)
    assert driver.floating == []
    assert services.agent is not None
    await services.agent.reconcile_once()
    assert [str(f.public_ip) for f in driver.floating] == [fip["address"]]
    calls = len(driver.calls)
    await services.agent.reconcile_once()  # unchanged: no second swap
    assert not [c for c in driver.calls[calls:] if c.startswith("apply_floating_ips")]


async def test_vm_show_lists_attached_volumes(api: httpx.AsyncClient) -> None:
    await make_image(api)
    await make_vm(api, "web")
    created = await api.post("/v1/volumes", json={"name": "data", "size_bytes": 1 << 30})
    assert created.status_code == 201, created.text
    assert (await api.get("/v1/vms/web")).json()["volumes"] == []
    attached = await api.post("/v1/volumes/data/attach", json={"vm": "web"})
    assert attached.status_code == 200, attached.text
    device = attached.json()["device"]
    shown = (await api.get("/v1/vms/web")).json()
    assert shown["volumes"] == [{"name": "data", "size_bytes": 1 << 30, "device": device}]
    listed = (await api.get("/v1/vms")).json()
    assert listed[0]["volumes"] == shown["volumes"]


async def concurrent_nics_and_floating_ips(api: httpx.AsyncClient, each: int) -> None:
    """``each`` VM creates with a NIC and ``each`` floating IP creates on one network, all at once:
    every address is handed out once, across both tables (the IPAM query reads both)."""
    await make_image(api)
    await make_net(api, "shared", "10.90.0.0/24")
    accepted: list[str] = []
    fip_statuses: list[int] = []

    async def create_vm(i: int) -> None:
        body = {"name": f"v{i}", "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1, "start": False}
        response = await api.post("/v1/vms", json={**body, "nics": [{"network": "shared"}]})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["operation"]["id"])

    async def create_fip() -> None:
        fip_statuses.append((await api.post("/v1/floating-ips", json={"network": "shared"})).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(each):
            tg.start_soon(create_vm, i)
            tg.start_soon(create_fip)
    for op_id in accepted:
        assert (await wait_operation(api, op_id, deadline=60))["status"] == "succeeded"
    assert fip_statuses == [201] * each
    nic_addresses = [n["address"] for vm in (await api.get("/v1/vms")).json() for n in vm["nics"]]
    fip_addresses = [f["address"] for f in (await api.get("/v1/floating-ips")).json()]
    assert len(nic_addresses) == len(fip_addresses) == each
    assert len(set(nic_addresses) | set(fip_addresses)) == 2 * each


async def test_concurrent_nics_and_floating_ips_never_share_an_address(api: httpx.AsyncClient) -> None:
    await concurrent_nics_and_floating_ips(api, 20)
