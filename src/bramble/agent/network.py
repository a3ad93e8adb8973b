"""The node's side of VM networks: bridges, taps, the firewall and one DHCP server per network.

Everything is derived from the specs of the VMs this node runs (``VmSpec.nics``): a bridge
exists while a NIC on it does, and each network's DHCP server answers exactly the MAC -> IP
reservations IPAM decided for the NICs here (no dynamic range: a stranger on the bridge gets
nothing). Security groups are part 2; until then every NIC gets an allow-all policy, which
still pins the tap to its MAC and address (anti-spoofing) and is applied before QEMU starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network

from bramble.boot.dhcp import DhcpConfig, DhcpServer
from bramble.boot.leases import LeaseStore, Reservation
from bramble.compute.driver import NicAttachment, VmSpec
from bramble.network.driver import (
    FloatingIp,
    MetadataTarget,
    NetworkDriver,
    NetworkSpec,
    NicSpec,
    Rule,
    SecurityPolicy,
)
from bramble.network.secgroups import NicMembership, SecurityGroup, compile_policies

log = logging.getLogger(__name__)

ALLOW_ALL = (Rule(),)

SecuritySource = Callable[[], Awaitable[tuple[Mapping[str, SecurityGroup], Mapping[str, Collection[IPv4Address]]]]]
FloatingSource = Callable[[], Awaitable[Sequence[FloatingIp]]]


class DhcpHandle:
    """A running reservations-only DHCP server on one network's bridge."""

    def __init__(self, server: DhcpServer, store: LeaseStore) -> None:
        self.server, self.store = server, store

    def set_reservations(self, reservations: Mapping[str, Reservation]) -> None:
        self.server.set_reservations(reservations)

    async def close(self) -> None:
        await self.server.close()
        self.store.close()


def network_spec(nic: NicAttachment, metadata: MetadataTarget | None = None) -> NetworkSpec:
    return NetworkSpec(
        id=nic.network_id,
        cidr=IPv4Network(nic.cidr),
        gateway=IPv4Address(nic.gateway),
        nat=nic.nat,
        uplink=nic.uplink,
        vlan=nic.vlan,
        metadata=metadata,
    )


def permissive_policy(nic: NicAttachment) -> SecurityPolicy:
    return SecurityPolicy(
        tap=nic.tap,
        bridge=nic.bridge,
        mac=nic.mac,
        ip=IPv4Address(nic.address),
        ingress=ALLOW_ALL,
        egress=ALLOW_ALL,
    )


class NodeNetworks:
    """Plugs and unplugs VMs' NICs through a NetworkDriver; one lock, because the firewall is one table."""

    def __init__(
        self,
        driver: NetworkDriver,
        *,
        dhcp_port: int = 67,
        lease_seconds: int = 3600,
        serve_dhcp: bool = True,
    ) -> None:
        self.driver = driver
        self.dhcp_port = dhcp_port
        self.lease_seconds = lease_seconds
        self.serve_dhcp = serve_dhcp
        self._plugged: dict[str, tuple[NicAttachment, ...]] = {}  # vm id -> its NICs
        self._dhcp: dict[str, DhcpHandle] = {}  # network id -> server
        self._lock = asyncio.Lock()
        # Where the groups' rules and members come from (the control plane); the agent sets it.
        self.security_source: SecuritySource | None = None
        # A firewall swap failed (control plane unreachable, kernel refused): the reconcile loop retries.
        self.firewall_stale = False
        # The metadata listener of a network (the agent sets both; None: no metadata DNAT).
        self.metadata_target: Callable[[NicAttachment], Awaitable[MetadataTarget]] | None = None
        self.metadata_release: Callable[[str], Awaitable[None]] | None = None
        # Floating IPs: this node's mappings per the control plane (None until first asked; the agent
        # sets the source), what the driver holds (None: unknown, so the first apply always runs), and
        # whether the last apply failed (the reconcile loop retries).
        self.floating_source: FloatingSource | None = None
        self._floating: tuple[FloatingIp, ...] | None = None
        self._floating_applied: tuple[FloatingIp, ...] | None = None
        self.floating_stale = False

    def nics(self) -> list[NicAttachment]:
        return [nic for nics in self._plugged.values() for nic in nics]

    def reservations(self) -> dict[str, dict[str, Reservation]]:
        """Per network id: the MAC -> address answers its DHCP server gives (exactly IPAM's decisions)."""
        result: dict[str, dict[str, Reservation]] = {}
        for nic in self.nics():
            result.setdefault(nic.network_id, {})[nic.mac] = Reservation(ip=IPv4Address(nic.address))
        return result

    async def plug(self, spec: VmSpec) -> None:
        """Bridges, taps and the VM's firewall entries, before QEMU opens the taps. Idempotent."""
        async with self._lock:
            if self._plugged.get(spec.vm_id, ()) == spec.nics and all(n.tap in self._taps() for n in spec.nics):
                return
            if not spec.nics and spec.vm_id not in self._plugged:
                return
            stale = {n.tap for n in self._plugged.get(spec.vm_id, ())} - {n.tap for n in spec.nics}
            for nic in spec.nics:
                target = await self.metadata_target(nic) if self.metadata_target is not None else None
                await asyncio.to_thread(self.driver.ensure_network, network_spec(nic, target))
                await asyncio.to_thread(
                    self.driver.ensure_tap,
                    NicSpec(
                        vm_id=spec.vm_id,
                        nic_id=nic.nic_id,
                        mac=nic.mac,
                        ip=IPv4Address(nic.address),
                        bridge=nic.bridge,
                        tap=nic.tap,
                    ),
                )
            previous = self._plugged.get(spec.vm_id)
            was_stale = self.firewall_stale
            self._plugged[spec.vm_id] = spec.nics
            try:
                await self._apply_firewall()
            except Exception:
                self.firewall_stale = was_stale  # the old firewall, for the old set of NICs, still holds
                # The firewall kept its old rules (one transaction); so must our idea of what is plugged,
                # or every later plug would resend the refused policy.
                if previous is None:
                    self._plugged.pop(spec.vm_id, None)
                else:
                    self._plugged[spec.vm_id] = previous
                raise
            for tap in stale:
                await asyncio.to_thread(self.driver.remove_tap, tap)
            await self._sync_dhcp()
            await self._apply_floating_logged()

    async def unplug(self, vm_id: str) -> None:
        """Remove the VM's taps; a network's bridge and DHCP server go with its last NIC on this node."""
        async with self._lock:
            nics = self._plugged.pop(vm_id, ())
            if not nics:
                return
            await self._apply_firewall()
            for nic in nics:
                await asyncio.to_thread(self.driver.remove_tap, nic.tap)
            in_use = {n.network_id for n in self.nics()}
            for network_id in {n.network_id for n in nics} - in_use:
                await asyncio.to_thread(self.driver.remove_network, network_id)
                if self.metadata_release is not None:
                    await self.metadata_release(network_id)
            await self._sync_dhcp()
            await self._apply_floating_logged()

    async def sweep_taps(self) -> list[str]:
        """Remove Bramble taps that no plugged NIC owns: left by VMs deleted while the daemon was down.

        Called once after the first reconcile pass, when every VM that should run is plugged. A stopped
        VM's tap may go too; plugging makes it again at the next start. Bridges are kept: their names
        are hashes of network ids and cannot be mapped back (see docs/network.md, limits).
        """
        async with self._lock:
            owned = {nic.tap for nic in self.nics()}
            observed = await asyncio.to_thread(self.driver.observe)
            stray = sorted(tap for tap in observed.taps if tap not in owned)
            for tap in stray:
                await asyncio.to_thread(self.driver.remove_tap, tap)
            return stray

    def _taps(self) -> set[str]:
        return set(self.driver.observe().taps)

    async def refresh(self) -> None:
        """Rules or group members changed: swap the whole firewall (taps and bridges untouched)."""
        async with self._lock:
            if self._plugged or self.firewall_stale:
                await self._apply_firewall()

    async def _apply_firewall(self) -> None:
        """Policies of every plugged NIC: its groups' rules, or allow-all for a NIC without groups."""
        policies: list[SecurityPolicy] = []
        memberships: list[NicMembership] = []
        for vm_id, nics in self._plugged.items():
            for nic in nics:
                if not nic.security_groups:
                    policies.append(permissive_policy(nic))
                    continue
                spec = NicSpec(
                    vm_id=vm_id,
                    nic_id=nic.nic_id,
                    mac=nic.mac,
                    ip=IPv4Address(nic.address),
                    bridge=nic.bridge,
                    tap=nic.tap,
                )
                memberships.append(NicMembership(nic=spec, groups=nic.security_groups))
        sets: dict[str, frozenset[IPv4Address]] = {}
        try:
            if memberships:
                if self.security_source is None:
                    raise RuntimeError("NICs have security groups but this node has no source for their rules")
                groups, members = await self.security_source()
                compiled, sets = compile_policies(memberships, groups, members)
                policies += compiled
            await asyncio.to_thread(self.driver.apply_security, policies, sets)
        except Exception:
            self.firewall_stale = True
            raise
        self.firewall_stale = False

    # ------------------------------------------------------------------ floating IPs
    def floating(self) -> list[FloatingIp]:
        """The mappings this node should hold: those of the NICs plugged here (a VM's go with its taps)."""
        plugged = {(nic.bridge, IPv4Address(nic.address)) for nic in self.nics()}
        return [f for f in self._floating or () if (f.bridge, f.private_ip) in plugged]

    async def refresh_floating(self) -> None:
        """Ask the control plane for this node's floating IPs and apply them (nothing to do when unchanged).

        Raises when the driver refuses (an uplink that does not exist here): the attach that asked is undone.
        """
        if self.floating_source is None:
            return
        fetched = tuple(await self.floating_source())
        async with self._lock:
            self._floating = fetched
            await self._apply_floating()

    async def _apply_floating(self) -> None:
        wanted = tuple(self.floating())
        if wanted == self._floating_applied and not self.floating_stale:
            return
        try:
            await asyncio.to_thread(self.driver.apply_floating_ips, wanted)
        except Exception:
            self.floating_stale = True
            raise
        self._floating_applied = wanted
        self.floating_stale = False

    async def _apply_floating_logged(self) -> None:
        """After a plug or unplug: a refusal must not fail the VM (it runs, unreachable from outside)."""
        if self._floating is None:  # not asked yet (agent start): the first refresh applies the whole set
            return
        try:
            await self._apply_floating()
        except Exception:
            log.exception("could not apply the floating IPs; the reconcile loop retries")

    async def _sync_dhcp(self) -> None:
        if not self.serve_dhcp:
            return
        wanted = self.reservations()
        for network_id in list(self._dhcp):
            if network_id not in wanted:
                await self._dhcp.pop(network_id).close()
        for network_id, reservations in wanted.items():
            server = self._dhcp.get(network_id)
            if server is None:
                sample = next(n for n in self.nics() if n.network_id == network_id)
                self._dhcp[network_id] = await self._start_dhcp(sample, reservations)
            else:
                server.set_reservations(reservations)

    async def _start_dhcp(self, nic: NicAttachment, reservations: Mapping[str, Reservation]) -> DhcpHandle:
        gateway = IPv4Address(nic.gateway)
        config = DhcpConfig(
            server_ip=gateway,
            subnet=IPv4Network(nic.cidr),
            router=gateway,
            dns=tuple(IPv4Address(a) for a in nic.dns),
            lease_seconds=self.lease_seconds,
            # IPAM already keeps freed addresses out of use; the lease store must not add its own wait.
            quarantine_seconds=0,
            reservations=dict(reservations),
        )
        store = LeaseStore(None, config.pool())
        server = DhcpServer(config, store, interface=nic.bridge, port=self.dhcp_port)
        try:
            await server.start()
        except OSError as exc:
            store.close()
            log.error("dhcp for network %s on %s could not start: %s", nic.network_id, nic.bridge, exc)
            raise
        return DhcpHandle(server, store)

    async def close(self) -> None:
        """Stop the DHCP servers; bridges and taps stay, for the VMs that keep running."""
        async with self._lock:
            for handle in self._dhcp.values():
                await handle.close()
            self._dhcp.clear()
