"""In-memory network driver for fast tests: same validation and the same compiled nft ruleset, no kernel."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bramble.network.driver import (
    FloatingIp,
    NetworkDriver,
    NetworkError,
    NetworkSpec,
    NicSpec,
    ObservedNetwork,
    SecurityPolicy,
    bridge_name,
)
from bramble.network.nft import SecurityRuleset, floating_commands, security_ruleset

__all__ = ["FakeNetworkDriver"]


@dataclass
class FakeNetworkDriver(NetworkDriver):
    networks: dict[str, NetworkSpec] = field(default_factory=dict)  # bridge -> spec
    taps: dict[str, NicSpec] = field(default_factory=dict)
    policies: dict[str, SecurityPolicy] = field(default_factory=dict)
    address_sets: dict[str, frozenset[IPv4Address]] = field(default_factory=dict)
    floating: list[FloatingIp] = field(default_factory=list)
    last_ruleset: SecurityRuleset | None = None  # what the bridge driver would load
    calls: list[str] = field(default_factory=list)

    def ensure_network(self, spec: NetworkSpec) -> None:
        self.calls.append(f"ensure_network {spec.bridge}")
        self.networks[spec.bridge] = spec

    def remove_network(self, network_id: str) -> None:
        bridge = bridge_name(network_id)
        self.calls.append(f"remove_network {bridge}")
        self.networks.pop(bridge, None)
        for tap in [t for t, nic in self.taps.items() if nic.bridge == bridge]:
            del self.taps[tap]  # deleting a bridge detaches its ports; our taps go with the VM, so drop them

    def ensure_tap(self, nic: NicSpec) -> None:
        self.calls.append(f"ensure_tap {nic.tap}")
        if nic.bridge not in self.networks:
            raise NetworkError(f"bridge {nic.bridge} does not exist (ensure the network first)")
        self.taps[nic.tap] = nic

    def remove_tap(self, tap: str) -> None:
        self.calls.append(f"remove_tap {tap}")
        self.taps.pop(tap, None)

    def apply_security(
        self, policies: Sequence[SecurityPolicy], address_sets: Mapping[str, Collection[IPv4Address]]
    ) -> None:
        self.calls.append(f"apply_security {len(policies)}")
        try:
            ruleset = security_ruleset(policies, address_sets)
        except ValueError as exc:
            raise NetworkError(f"invalid security policy (nothing applied): {exc}") from None
        self.last_ruleset = ruleset
        self.policies = {p.tap: p for p in policies}
        self.address_sets = {name: frozenset(members) for name, members in address_sets.items()}

    def apply_floating_ips(self, floating: Sequence[FloatingIp]) -> None:
        self.calls.append(f"apply_floating_ips {len(floating)}")
        try:
            floating_commands(floating)
        except ValueError as exc:
            raise NetworkError(f"invalid floating IPs (nothing applied): {exc}") from None
        self.floating = list(floating)

    def observe(self) -> ObservedNetwork:
        return ObservedNetwork(bridges=set(self.networks), taps={t: n.bridge for t, n in self.taps.items()})
