"""The agent's network side on the fake driver: idempotent plugging, stale taps, unplugging."""

from __future__ import annotations

import dataclasses

import pytest

from bramble.agent.network import NodeNetworks
from bramble.compute.driver import NicAttachment, VmSpec
from bramble.network.driver import NetworkError, bridge_name
from bramble.network.fake import FakeNetworkDriver
from bramble.network.secgroups import SecurityGroup

pytestmark = pytest.mark.anyio


def nic(index: int, network: str = "n1") -> NicAttachment:
    return NicAttachment(
        nic_id=f"nic-{index}",
        network_id=network,
        tap=f"bt-{index:012d}",
        bridge=bridge_name(network),
        mac=f"02:b7:00:00:00:{index:02x}",
        address=f"10.20.0.{index + 2}",
        cidr="10.20.0.0/24",
        gateway="10.20.0.1",
    )


def vm(vm_id: str, *nics: NicAttachment) -> VmSpec:
    return VmSpec(vm_id=vm_id, name=vm_id, arch="x86_64", cpus=1, memory_mib=64, nics=nics)


async def test_plug_is_idempotent_and_replaces_stale_taps() -> None:
    driver = FakeNetworkDriver()
    networks = NodeNetworks(driver, serve_dhcp=False)
    await networks.plug(vm("a", nic(1)))
    calls = len(driver.calls)
    await networks.plug(vm("a", nic(1)))
    assert len(driver.calls) == calls  # nothing changed, nothing done
    await networks.plug(vm("a", nic(2)))
    assert set(driver.taps) == {nic(2).tap}
    assert [p.tap for p in driver.policies.values()] == [nic(2).tap]


async def test_a_tap_lost_underneath_is_made_again() -> None:
    driver = FakeNetworkDriver()
    networks = NodeNetworks(driver, serve_dhcp=False)
    await networks.plug(vm("a", nic(1)))
    driver.remove_tap(nic(1).tap)
    await networks.plug(vm("a", nic(1)))
    assert set(driver.taps) == {nic(1).tap}


async def test_unplug_keeps_shared_bridges_until_the_last_nic() -> None:
    driver = FakeNetworkDriver()
    networks = NodeNetworks(driver, serve_dhcp=False)
    await networks.plug(vm("a", nic(1)))
    await networks.plug(vm("b", nic(2), nic(3, network="n2")))
    assert {k: sorted(v) for k, v in networks.reservations().items()} == {
        "n1": [nic(1).mac, nic(2).mac],
        "n2": [nic(3).mac],
    }
    await networks.unplug("b")
    assert set(driver.networks) == {nic(1).bridge} and set(driver.taps) == {nic(1).tap}
    await networks.unplug("a")
    await networks.unplug("a")  # twice is fine
    assert driver.networks == {} and driver.taps == {} and driver.policies == {}


async def test_a_refused_policy_is_forgotten() -> None:
    driver = FakeNetworkDriver()
    networks = NodeNetworks(driver, serve_dhcp=False)
    bad = dataclasses.replace(nic(1), mac="02:B7:00:00:00:01")  # upper case: the firewall refuses it
    with pytest.raises((NetworkError, ValueError)):
        await networks.plug(vm("a", bad))
    assert networks.nics() == []
    await networks.plug(vm("b", nic(2)))  # the refused VM does not poison later plugs
    assert [p.tap for p in driver.policies.values()] == [nic(2).tap]


async def test_sweep_removes_only_taps_no_plugged_nic_owns() -> None:
    driver = FakeNetworkDriver()
    await NodeNetworks(driver, serve_dhcp=False).plug(vm("gone", nic(1)))  # an earlier life of the agent
    networks = NodeNetworks(driver, serve_dhcp=False)
    await networks.plug(vm("kept", nic(2)))
    assert await networks.sweep_taps() == [nic(1).tap]
    assert set(driver.taps) == {nic(2).tap}
    assert await networks.sweep_taps() == []


async def test_a_failed_refresh_marks_the_firewall_stale_until_one_succeeds() -> None:
    driver = FakeNetworkDriver()
    networks = NodeNetworks(driver, serve_dhcp=False)
    grouped = dataclasses.replace(nic(1), security_groups=("web",))

    async def unreachable() -> tuple[dict, dict]:
        raise ConnectionError("control plane unreachable")

    networks.security_source = unreachable
    with pytest.raises(ConnectionError):
        await networks.plug(vm("a", grouped))
    assert networks.firewall_stale is False  # a refused plug is forgotten, so nothing is stale
    await networks.plug(vm("b", nic(2)))
    networks._plugged["a"] = (grouped,)  # as if the group was added after the plug
    with pytest.raises(ConnectionError):
        await networks.refresh()
    assert networks.firewall_stale

    async def reachable() -> tuple[dict, dict]:
        return {"web": SecurityGroup(id="web", name="web", project="default")}, {}

    networks.security_source = reachable
    await networks.refresh()
    assert networks.firewall_stale is False
    assert driver.policies[grouped.tap].ingress == ()  # an empty group allows nothing in
