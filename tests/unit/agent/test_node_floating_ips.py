"""The agent's floating IP side on the fake driver: the node's set from the control plane, applied
for the NICs plugged here, whole, only when it changed or the last apply failed."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address

import pytest

from bramble.agent.network import NodeNetworks
from bramble.network.driver import FloatingIp, NetworkError
from bramble.network.fake import FakeNetworkDriver
from tests.unit.agent.test_node_networks import nic, vm

pytestmark = pytest.mark.anyio


def mapping(public: str, index: int) -> FloatingIp:
    """The floating IP of ``nic(index)``."""
    return FloatingIp(IPv4Address(public), IPv4Address(nic(index).address), nic(index).bridge, uplink="up0")


class Source:
    """The control plane's answer, changed by the test."""

    def __init__(self) -> None:
        self.floating: list[FloatingIp] = []
        self.asked = 0

    async def __call__(self) -> Sequence[FloatingIp]:
        self.asked += 1
        return list(self.floating)


def applies(driver: FakeNetworkDriver) -> int:
    return sum(call.startswith("apply_floating_ips") for call in driver.calls)


async def test_only_plugged_nics_get_their_mapping_and_unplug_drops_it() -> None:
    driver, source = FakeNetworkDriver(), Source()
    networks = NodeNetworks(driver, serve_dhcp=False)
    networks.floating_source = source
    source.floating = [mapping("192.0.2.10", 1), mapping("192.0.2.11", 2)]
    await networks.plug(vm("a", nic(1)))
    assert applies(driver) == 0  # not asked yet (agent start): the kernel's set is left alone until then
    await networks.refresh_floating()
    assert driver.floating == [mapping("192.0.2.10", 1)]  # nic 2's VM is not here (stopped, or elsewhere)
    await networks.plug(vm("b", nic(2)))  # it starts: its mapping comes with its tap
    assert driver.floating == [mapping("192.0.2.10", 1), mapping("192.0.2.11", 2)]
    await networks.unplug("a")
    assert driver.floating == [mapping("192.0.2.11", 2)]


async def test_first_refresh_replaces_whatever_the_kernel_had_and_later_ones_only_changes() -> None:
    driver, source = FakeNetworkDriver(), Source()
    driver.floating = [mapping("192.0.2.99", 7)]  # left by a previous run (detached while the daemon was down)
    networks = NodeNetworks(driver, serve_dhcp=False)
    networks.floating_source = source
    await networks.refresh_floating()
    assert driver.floating == [] and applies(driver) == 1
    await networks.refresh_floating()
    assert applies(driver) == 1 and source.asked == 2  # asked again, nothing to change


async def test_a_refused_apply_is_stale_and_retried() -> None:
    driver, source = FakeNetworkDriver(), Source()
    networks = NodeNetworks(driver, serve_dhcp=False)
    networks.floating_source = source
    await networks.plug(vm("a", nic(1)))
    source.floating = [mapping("192.0.2.10", 1)]
    real_apply = driver.apply_floating_ips

    def refuse(floating: Sequence[FloatingIp]) -> None:
        raise NetworkError("uplink up0 for floating IP 192.0.2.10 does not exist")

    driver.apply_floating_ips = refuse  # type: ignore[method-assign]
    with pytest.raises(NetworkError, match="up0"):
        await networks.refresh_floating()
    assert networks.floating_stale and driver.floating == []
    # a plug meanwhile must not fail the VM for it
    await networks.plug(vm("b", nic(2)))
    driver.apply_floating_ips = real_apply  # type: ignore[method-assign]
    await networks.refresh_floating()  # same set as before, but stale: applied
    assert driver.floating == [mapping("192.0.2.10", 1)] and not networks.floating_stale
