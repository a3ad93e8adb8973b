"""Security groups through the real API on the fake drivers: the default group, rules compiled to
per-tap policies, live updates, remote-group address sets, and every bad input as a 4xx."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import httpx
import pytest

from bramble.daemon import Services
from bramble.network.driver import Rule
from tests.unit.api.helpers import make_image, make_vm
from tests.unit.api.test_networks import delete_vm, fake_driver, make_net

pytestmark = pytest.mark.anyio


async def group(api: httpx.AsyncClient, name: str) -> dict:
    response = await api.get(f"/v1/security-groups/{name}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_nics_join_the_default_group_which_admits_only_its_members(
    api: httpx.AsyncClient, services: Services
) -> None:
    await make_image(api)
    await make_net(api)
    a = await make_vm(api, "a", nics=[{"network": "lan"}])
    b = await make_vm(api, "b", nics=[{"network": "lan"}])
    assert a["nics"][0]["security_groups"] == ["default"]
    default = await group(api, "default")
    assert default["vms"] == ["a", "b"]
    assert {(r["direction"], r["cidr"], r["remote_group"]) for r in default["rules"]} == {
        ("ingress", None, "default"),
        ("egress", "0.0.0.0/0", None),
    }
    driver = fake_driver(services)
    policy = driver.policies[a["nics"][0]["tap"]]
    assert default["id"] == "default"
    assert policy.ingress == (Rule(remote_set=default["id"]),)
    assert policy.egress == (Rule(cidr=IPv4Network("0.0.0.0/0")),)
    assert driver.address_sets[default["id"]] == {IPv4Address("10.20.0.2"), IPv4Address("10.20.0.3")}
    # a member leaving shrinks the set on the others' firewall
    await delete_vm(api, "b")
    assert driver.address_sets[default["id"]] == {IPv4Address("10.20.0.2")}
    assert b["nics"][0]["tap"] not in driver.policies


async def test_rule_changes_reach_running_vms_live(api: httpx.AsyncClient, services: Services) -> None:
    await make_image(api)
    await make_net(api)
    created = await api.post("/v1/security-groups", json={"name": "web", "description": "http in"})
    assert created.status_code == 201, created.text
    vm = await make_vm(api, "w", nics=[{"network": "lan"}], security_groups=["web", "default"])
    assert vm["nics"][0]["security_groups"] == ["default", "web"]
    driver = fake_driver(services)
    tap = vm["nics"][0]["tap"]
    taps_before = dict(driver.taps)
    added = await api.post(
        "/v1/security-groups/web/rules",
        json={"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 81, "cidr": "0.0.0.0/0"},
    )
    assert added.status_code == 201, added.text
    http = Rule(protocol="tcp", port_min=80, port_max=81, cidr=IPv4Network("0.0.0.0/0"))
    assert http in driver.policies[tap].ingress
    assert driver.taps == taps_before  # taps and bridges untouched: only the firewall swapped
    rule_id = next(r["id"] for r in added.json()["rules"] if r["protocol"] == "tcp")
    assert (await api.delete(f"/v1/security-groups/web/rules/{rule_id}")).status_code == 204
    assert http not in driver.policies[tap].ingress
    events = (await api.get("/v1/events", params={"target": "secgroup/web"})).json()
    assert {"secgroup.create", "secgroup.rule_add", "secgroup.rule_delete"} <= {e["action"] for e in events}


@pytest.mark.parametrize(
    ("rule", "status", "words"),
    [
        ({"direction": "sideways"}, 422, "direction"),
        ({"direction": "ingress", "protocol": "icmp", "port_min": 22}, 422, "ports need protocol tcp or udp"),
        ({"direction": "ingress", "protocol": "tcp", "port_min": 90, "port_max": 80}, 422, "90-80"),
        ({"direction": "ingress", "protocol": "tcp", "port_max": 80}, 422, "first port"),
        ({"direction": "ingress", "cidr": "10.0.0.1/8"}, 422, "host bits"),
        ({"direction": "ingress", "cidr": "nope"}, 422, "nope"),
        ({"direction": "ingress", "cidr": "10.0.0.0/8", "remote_group": "default"}, 422, "not both"),
        ({"direction": "ingress", "remote_group": "ghost"}, 404, "security group 'ghost' not found"),
    ],
)
async def test_bad_rules_are_4xx(api: httpx.AsyncClient, rule: dict, status: int, words: str) -> None:
    before = len((await group(api, "default"))["rules"])
    response = await api.post("/v1/security-groups/default/rules", json=rule)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert len((await group(api, "default"))["rules"]) == before


async def test_groups_in_use_or_referenced_cannot_be_deleted(api: httpx.AsyncClient) -> None:
    await make_image(api)
    await make_net(api)
    for name in ("app", "db"):
        assert (await api.post("/v1/security-groups", json={"name": name})).status_code == 201
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 5432, "remote_group": "app"}
    assert (await api.post("/v1/security-groups/db/rules", json=rule)).status_code == 201
    await make_vm(api, "d1", nics=[{"network": "lan"}], security_groups=["db"])
    in_use = await api.delete("/v1/security-groups/db")
    assert in_use.status_code == 409 and "in use by VM(s) d1" in in_use.json()["error"]["message"]
    referenced = await api.delete("/v1/security-groups/app")
    assert referenced.status_code == 409 and "remote group of rules in db" in referenced.json()["error"]["message"]
    await delete_vm(api, "d1")
    assert (await api.delete("/v1/security-groups/db")).status_code == 204
    assert (await api.delete("/v1/security-groups/app")).status_code == 204
    # the default group (self-referencing rule) can go too once nothing uses it
    assert (await api.delete("/v1/security-groups/default")).status_code == 204
    # and the next NIC without groups brings it back
    vm = await make_vm(api, "d2", nics=[{"network": "lan"}])
    assert vm["nics"][0]["security_groups"] == ["default"]
    assert len((await group(api, "default"))["rules"]) == 2


async def test_bad_group_requests_on_vm_create(api: httpx.AsyncClient) -> None:
    await make_image(api)
    await make_net(api)
    body = {"name": "x", "image": "tiny", "cpus": 1, "memory_mib": 64, "disk_gib": 1}
    unknown = await api.post("/v1/vms", json={**body, "nics": [{"network": "lan"}], "security_groups": ["ghost"]})
    assert unknown.status_code == 404 and "security group 'ghost' not found" in unknown.json()["error"]["message"]
    no_nic = await api.post("/v1/vms", json={**body, "security_groups": ["default"]})
    assert no_nic.status_code == 422 and "--net" in no_nic.json()["error"]["message"]
    assert (await api.post("/v1/security-groups", json={"name": "default"})).status_code == 409
    duplicate = await api.post("/v1/security-groups", json={"name": "web"})
    assert duplicate.status_code == 201
    again = await api.post("/v1/security-groups", json={"name": "web"})
    assert again.status_code == 409
    assert (await api.get("/v1/vms")).json() == []
