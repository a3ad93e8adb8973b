"""The ``boot`` role of brambled: DHCP (or proxy-DHCP), TFTP, HTTP boot, syslog, Wake-on-LAN, schedules.

It composes the boot servers for the interfaces named in the config, answers PXE clients from the
machine inventory, and turns every interaction into a ``BootObservation`` for the audit log, attributed
to a machine (``machine/NAME``) by MAC, or by source address through the leases it handed out. It is a
driver like the others: it reports through a callback and never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, Protocol

from bramble.boot.dhcp import DhcpEvent, DhcpServer, ProxyDhcpServer, build_server, default_policy, interface_address
from bramble.boot.exchanges import BootObservation, DhcpExchanges
from bramble.boot.http import BootHttpServer, HttpBootEvent
from bramble.boot.ipxe import BootUrls, render_script
from bramble.boot.leases import Reservation
from bramble.boot.pxe import BootAnswer, PxeClient, PxePolicy
from bramble.boot.records import Machine, Profile
from bramble.boot.schedule import WakeSchedule, due
from bramble.boot.syslog import SyslogSink
from bramble.boot.tftp import TftpEvent, TftpServer
from bramble.boot.wol import send_wake
from bramble.config import BootInterfaceSettings, Settings
from bramble.proto.syslog import SyslogMessage

__all__ = ["BootObservation", "BootRole", "DhcpPacketSink", "MachineInventory", "due_wakes"]

log = logging.getLogger(__name__)

#: Where the DHCP handler sends each packet: (interface, target, event, wall-clock time). In brambled
#: that is the audit writer process (``bramble.auditd``), which pairs and formats them on another core.
DhcpPacketSink = Callable[[str, str, DhcpEvent, float], None]

# A firmware client that was handed an iPXE loader comes back as iPXE within seconds; within this
# window a machine set to always chainload Bramble's own iPXE gets its script instead of the loader again.
_CHAINLOAD_WINDOW_SECONDS = 120.0
_SCHEDULE_TICK_SECONDS = 20.0
# Hand edits of a machine's ip reach the DHCP server within this long (the inventory reloads each second).
_RESERVATION_SYNC_SECONDS = 2.0


def due_wakes(inventory: MachineInventory, since: datetime, now: datetime) -> list[Machine]:
    """Machines with a wake time (their own or their groups') that fell due in (since, now], once each."""
    schedules = [(machine.name, wake) for machine in inventory.machines() for wake in inventory.wake_times(machine)]
    names = dict.fromkeys(d.target for d in due(schedules, since, now))
    machines = {machine.name: machine for machine in inventory.machines()}
    return [machines[name] for name in names if name in machines]


class MachineInventory(Protocol):
    """What the role needs from the inventory (``bramble.boot.inventory.Inventory`` is one)."""

    def machine_by_mac(self, mac: str) -> Machine | None: ...
    def machine_by_ip(self, ip: str) -> Machine | None: ...
    def machines(self) -> list[Machine]: ...
    def profile_for(self, machine: Machine | None) -> Profile: ...
    def discover(self, mac: str, arch: str, ip: str | None = None) -> Machine: ...
    def wake_times(self, machine: Machine) -> tuple[WakeSchedule, ...]: ...


def _fields(record: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict (works for slots dataclasses, which have no ``__dict__``)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


@dataclass
class _Link:
    """One provisioning interface and what serves it."""

    settings: BootInterfaceSettings
    address: IPv4Interface
    policy: PxePolicy
    dhcp: DhcpServer | ProxyDhcpServer
    ra: Any = None  # bramble.boot.ra.RouterAdvertiser

    @property
    def urls(self) -> BootUrls:
        return BootUrls(http_base=self.policy.http_base, tftp_server=str(self.address.ip))


class BootRole:
    """Everything the ``boot`` role serves, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        inventory: MachineInventory,
        observe: Callable[[BootObservation], None],
        *,
        dhcp_packets: DhcpPacketSink | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``observe`` gets every interaction but DHCP packets, which go to ``dhcp_packets``; without
        one, the role pairs them into exchanges itself and hands those to ``observe`` too."""
        self.settings = settings
        self.inventory = inventory
        self._observe = observe
        self._loop_time = clock
        self._links: list[_Link] = []
        self._tftp: TftpServer | None = None
        self._http: BootHttpServer | None = None
        self._syslog: SyslogSink | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ip_to_mac: dict[str, str] = {}
        self._chainloaded: dict[str, float] = {}  # mac -> when it was handed a loader
        self._discovering: set[str] = set()
        self._started: list[Any] = []
        self._exchanges: DhcpExchanges | None = None
        if dhcp_packets is None:
            self._exchanges = DhcpExchanges(self._record, clock=self._now)
            dhcp_packets = self._exchanges.packet
        self._dhcp_packets = dhcp_packets
        # The machine the boot chooser looked up for the packet being handled: its event comes next.
        self._packet_machine: tuple[str, Machine | None] | None = None

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        boot = self.settings.boot
        files = self.settings.boot_files_path
        files.mkdir(parents=True, exist_ok=True)
        lease_dir = self.settings.state_dir / "boot"
        lease_dir.mkdir(parents=True, exist_ok=True)
        try:
            for iface in boot.interfaces:
                link = self._build_link(iface, lease_dir)
                self._links.append(link)
            self._tftp = TftpServer(
                files, host="0.0.0.0", port=boot.tftp_port, spin_us=boot.tftp_spin_us, on_event=self._on_tftp
            )
            self._http = BootHttpServer(
                files, self._script_for, host="0.0.0.0", port=boot.http_port, on_event=self._on_http
            )
            self._syslog = SyslogSink("0.0.0.0", boot.syslog_port, self._on_syslog)
            for server in (self._tftp, self._http, self._syslog):
                await server.start()
                self._started.append(server)
            for link in self._links:
                await link.dhcp.start()
                self._started.append(link.dhcp)
                if link.ra is not None:
                    await link.ra.start()
                    self._started.append(link.ra)
        except BaseException:
            await self.close()
            raise
        self._spawn(self._schedule_loop())
        self._spawn(self._reservation_loop())
        if self._exchanges is not None:
            self._spawn(self._held_offer_loop())
        log.info(
            "boot role up: %s; files %s; inventory %s",
            ", ".join(f"{link.settings.name} ({link.settings.mode}, {link.address})" for link in self._links)
            or "no DHCP interfaces",
            files,
            self.settings.inventory_path,
        )

    async def close(self) -> None:
        if self._exchanges is not None:
            self._exchanges.release(None)  # an exchange cut short by shutdown is still recorded
        for link in self._links:  # what each server did in its life: the operator's first look after a storm
            counts = ", ".join(f"{name} {count}" for name, count in link.dhcp.stats.items())
            log.info("dhcp on %s stopping: %s", link.settings.name, counts)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in reversed(self._started):
            with contextlib.suppress(Exception):
                await server.close()
        self._started.clear()
        self._links.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _build_link(self, iface: BootInterfaceSettings, lease_dir: Path) -> _Link:
        detected = interface_address(iface.name)
        server_ip = IPv4Address(iface.server_ip) if iface.server_ip else detected.ip
        address = IPv4Interface(f"{server_ip}/{detected.network.prefixlen}")
        policy = default_policy(server_ip, self.settings.boot.http_port)
        dhcp = build_server(
            iface,
            choose=self._boot_answer_for(policy, iface),
            lease_path=lease_dir / f"leases-{iface.name}.json",
            quarantine_seconds=self.settings.boot.quarantine_seconds,
            port=self.settings.boot.dhcp_port,
            on_event=self._dhcp_event_handler(iface.name),
        )
        if isinstance(dhcp, DhcpServer):
            for lease in dhcp.store.leases():
                self._ip_to_mac[str(lease.ip)] = lease.mac
        ra = None
        if iface.router_advertisements:
            from bramble.boot.ra import RouterAdvertiser

            ra = RouterAdvertiser(iface.name)
        return _Link(iface, address, policy, dhcp, ra)

    def _sync_reservations(self) -> None:
        """Machines with a fixed ``ip`` in the inventory get it from the authoritative server on their link."""
        machines = [m for m in self.inventory.machines() if m.ip]
        for link in self._links:
            if not isinstance(link.dhcp, DhcpServer):
                continue
            wanted = {
                m.mac: Reservation(IPv4Address(m.ip), m.hostname)
                for m in machines
                if m.ip and IPv4Address(m.ip) in link.dhcp.config.subnet
            }
            if wanted != dict(link.dhcp.config.reservations):
                link.dhcp.set_reservations(wanted)
                log.info("dhcp %s: %d reservations from the inventory", link.settings.name, len(wanted))

    async def _reservation_loop(self) -> None:
        while True:
            try:
                self._sync_reservations()
            except Exception:
                log.exception("could not apply inventory reservations")
            await asyncio.sleep(_RESERVATION_SYNC_SECONDS)

    # ------------------------------------------------------------------ PXE answers
    def _boot_answer_for(
        self, policy: PxePolicy, iface: BootInterfaceSettings
    ) -> Callable[[PxeClient], BootAnswer | None]:
        def choose(client: PxeClient) -> BootAnswer | None:
            machine = self.inventory.machine_by_mac(client.mac)
            self._packet_machine = (client.mac, machine)  # the same packet's event needs it next
            if machine is None and client.is_pxe:
                self._discover_later(client)
            if iface.chainload_ipxe and client.is_ipxe and client.arch in (None, 0):
                return self._chainload(policy, client)
            return policy.choose(client)

        return choose

    def _chainload(self, policy: PxePolicy, client: PxeClient) -> BootAnswer | None:
        """An iPXE NIC ROM first gets our undionly.kpxe; once it has downloaded it, the loader's own
        request (seconds later) gets the script.

        Keyed by MAC and time, because the ROM and the loader both say they are iPXE. A machine that
        boots again after the window chainloads again, which is what the setting asks for.
        """
        now = self._now()
        handed = self._chainloaded.get(client.mac)
        if handed is not None and now - handed < _CHAINLOAD_WINDOW_SECONDS:
            return policy.choose(client)
        as_firmware = PxeClient(
            mac=client.mac,
            arch=0,
            arch_name="bios",
            vendor_class=client.vendor_class,
            user_class=(),
            is_ipxe=False,
            is_http_client=False,
            uuid=client.uuid,
        )
        return policy.choose(as_firmware)

    def _loader_fetched(self, mac: str) -> None:
        """The window opens when the loader has really been downloaded (the ROM's REQUEST comes before)."""
        now = self._now()
        self._chainloaded[mac] = now
        if len(self._chainloaded) > 10_000:
            cutoff = now - _CHAINLOAD_WINDOW_SECONDS
            self._chainloaded = {m: t for m, t in self._chainloaded.items() if t >= cutoff}

    def _now(self) -> float:
        return self._loop_time() if self._loop_time is not None else time.monotonic()

    def _discover_later(self, client: PxeClient) -> None:
        """Record an unknown PXE client as a discovered machine, off the packet path (files and git)."""
        if client.mac in self._discovering:
            return
        self._discovering.add(client.mac)
        arch = "aarch64" if client.arch in (11, 19) else "x86_64"

        async def discover() -> None:
            try:
                machine = await asyncio.to_thread(self.inventory.discover, client.mac, arch)
            except Exception as exc:  # a full disk must not stop boots
                log.warning("could not record discovered machine %s: %s", client.mac, exc)
                self._discovering.discard(client.mac)
                return
            self._emit(
                "machine.discovered",
                f"machine/{machine.name}",
                f"unknown {client.arch_name or 'pxe'} client {client.mac} recorded with the default profile",
                details={"mac": client.mac, "arch": client.arch_name, "vendor_class": client.vendor_class},
            )

        self._spawn(discover())

    def _script_for(self, mac: str, client_ip: str) -> str | None:
        machine = self.inventory.machine_by_mac(mac)
        profile = self.inventory.profile_for(machine)
        self._ip_to_mac.setdefault(client_ip, mac)
        return render_script(machine, mac, profile, self._link_for(client_ip).urls)

    def _link_for(self, client_ip: str) -> _Link:
        with contextlib.suppress(ValueError):
            ip = IPv4Address(client_ip)
            for link in self._links:
                if ip in link.address.network:
                    return link
        if not self._links:
            raise LookupError("no boot interfaces configured")
        return self._links[0]

    # ------------------------------------------------------------------ wake
    async def wake(self, mac: str, interface: str | None) -> str:
        """Send the magic packet; the interface defaults to the one whose subnet holds the machine's IP."""
        machine = self.inventory.machine_by_mac(mac)
        chosen = interface or (machine.interface if machine else None)
        if chosen is None and machine is not None and machine.ip:
            with contextlib.suppress(LookupError):
                chosen = self._link_for(machine.ip).settings.name
        if chosen is None and self._links:
            chosen = self._links[0].settings.name
        await send_wake(mac, chosen)
        self._emit(
            "boot.wake",
            self._target(mac=mac),
            f"magic packet for {mac} sent on {chosen or 'the default route'}",
            details={"mac": mac, "interface": chosen},
        )
        return chosen or ""

    async def _schedule_loop(self) -> None:
        last = datetime.now(UTC)
        while True:
            await asyncio.sleep(_SCHEDULE_TICK_SECONDS)
            now = datetime.now(UTC)
            try:
                for machine in due_wakes(self.inventory, last, now):
                    await self.wake(machine.mac, machine.interface)
            except Exception:
                log.exception("power schedule check failed")
            last = now

    # ------------------------------------------------------------------ events
    def _target(self, *, mac: str | None = None, ip: str | None = None) -> str:
        if mac is None and ip is not None:
            mac = self._ip_to_mac.get(ip)
            if mac is None:
                machine = self.inventory.machine_by_ip(ip)
                if machine is not None:
                    return f"machine/{machine.name}"
        if mac is not None:
            machine = self.inventory.machine_by_mac(mac)
            return f"machine/{machine.name}" if machine is not None else f"mac/{mac}"
        return f"ip/{ip}"

    def _emit(self, action: str, target: str, message: str, outcome: str = "ok", **kw: Any) -> None:
        try:
            self._observe(BootObservation(action, target, message, outcome, kw.get("details") or {}))
        except Exception:
            log.exception("could not record %s for %s", action, target)

    def _dhcp_event_handler(self, interface: str) -> Callable[[DhcpEvent], None]:
        """Runs once per DHCP packet, on the packet path: it decides the target (the boot chooser has
        usually just looked the machine up) and hands the packet on; pairing and formatting happen
        where ``dhcp_packets`` does them, in brambled another process."""
        ip_to_mac = self._ip_to_mac
        packets = self._dhcp_packets
        wall_clock = time.time

        def on_event(event: DhcpEvent) -> None:
            if event.message_type == "DISCOVER" and (event.ipxe or event.arch is not None):
                link = next((k for k in self._links if k.settings.name == interface), None)
                if link is not None and link.ra is not None:
                    link.ra.nudge()
            mac = event.mac
            if event.yiaddr and event.outcome == "acked":
                ip_to_mac[event.yiaddr] = mac
            looked_up, self._packet_machine = self._packet_machine, None
            if looked_up is not None and looked_up[0] == mac:
                machine = looked_up[1]
                target = f"mac/{mac}" if machine is None else f"machine/{machine.name}"
            else:
                target = self._target(mac=mac)
            try:
                packets(interface, target, event, wall_clock())
            except Exception:
                log.exception("could not record a DHCP %s for %s", event.message_type, target)

        return on_event

    def _record(self, seen: BootObservation) -> None:
        try:
            self._observe(seen)
        except Exception:
            log.exception("could not record %s for %s", seen.action, seen.target)

    async def _held_offer_loop(self) -> None:
        exchanges = self._exchanges
        assert exchanges is not None
        while True:
            await asyncio.sleep(exchanges.hold_seconds / 3)
            exchanges.release_expired()

    def _on_tftp(self, event: TftpEvent) -> None:
        details = {k: v for k, v in _fields(event).items() if v not in (None, "", ())}
        client = details.get("client")
        ip = client[0] if isinstance(client, tuple) else None
        if isinstance(client, tuple):
            details["client"] = f"{client[0]}:{client[1]}"
        outcome = getattr(event, "outcome", "ok")
        filename = str(getattr(event, "filename", ""))
        if ip is not None and outcome == "sent" and filename.endswith((".kpxe", ".pxe")):
            mac = self._ip_to_mac.get(ip)
            if mac is not None:
                self._loader_fetched(mac)
        text = f"tftp {getattr(event, 'filename', '?')}: {outcome}"
        sent = getattr(event, "bytes_sent", None)
        if sent:
            text += f", {sent} bytes"
        self._emit(
            "boot.tftp",
            self._target(ip=ip),
            text,
            "failed" if outcome in ("not_found", "denied", "timeout") else "ok",
            details=details,
        )

    def _on_http(self, event: HttpBootEvent) -> None:
        target = self._target(mac=event.mac) if event.mac else self._target(ip=event.client)
        text = f"{event.method} {event.path} -> {event.status}, {event.bytes_sent} bytes"
        details = {k: v for k, v in _fields(event).items() if v not in (None, "")}
        self._emit("boot.http", target, text, "ok" if event.status < 400 else "failed", details=details)

    def _on_syslog(self, message: SyslogMessage, source: str) -> None:
        ip = source
        text = getattr(message, "message", "") or ""
        details = {k: v for k, v in _fields(message).items() if v not in (None, "", ()) and not isinstance(v, bytes)}
        details["source"] = source
        for key, value in list(details.items()):
            if isinstance(value, datetime):
                details[key] = value.isoformat()
        self._emit("boot.syslog", self._target(ip=ip), text[:2000], details=details)
