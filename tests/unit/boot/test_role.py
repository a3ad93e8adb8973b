"""The boot role's own decisions: chainloading an iPXE ROM once, attributing events, wake schedules."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from bramble.boot.inventory import Inventory
from bramble.boot.pxe import PxeClient, PxePolicy
from bramble.boot.records import Machine
from bramble.boot.role import BootObservation, BootRole, due_wakes
from bramble.boot.tftp import TftpEvent
from bramble.config import BootInterfaceSettings, load_settings

MAC = "52:54:00:99:00:10"


def _role(tmp_path: Path, clock: list[float]) -> tuple[BootRole, Inventory, list[BootObservation]]:
    settings = load_settings(state_dir=tmp_path, boot={"inventory_dir": str(tmp_path / "inv")})
    inventory = Inventory(tmp_path / "inv", "discovered")
    seen: list[BootObservation] = []
    return BootRole(settings, inventory, seen.append, clock=lambda: clock[0]), inventory, seen


def _ipxe_rom() -> PxeClient:
    return PxeClient(MAC, 0, "bios", "PXEClient:Arch:00000:UNDI:002001", ("iPXE",), True, False, None)


def test_an_ipxe_rom_gets_the_loader_until_it_has_downloaded_it_then_the_script(tmp_path: Path) -> None:
    clock = [1000.0]
    role, _, _ = _role(tmp_path, clock)
    policy = PxePolicy(tftp_server=IPv4Address("10.99.0.1"), http_base="http://10.99.0.1:8471")
    # DISCOVER and REQUEST of the ROM both get undionly.kpxe (the same answer in OFFER and ACK)
    for _ in range(2):
        answer = role._chainload(policy, _ipxe_rom())
        assert answer is not None and answer.file == "undionly.kpxe"
    role._ip_to_mac["10.99.0.100"] = MAC
    role._on_tftp(TftpEvent(("10.99.0.100", 2070), "undionly.kpxe", "sent", 70000, 1432, 1, 0.1))
    clock[0] += 3
    answer = role._chainload(policy, _ipxe_rom())
    assert answer is not None and answer.kind == "script" and answer.file.endswith(f"/boot/{MAC}.ipxe")
    clock[0] += 600  # a later reboot chainloads again
    answer = role._chainload(policy, _ipxe_rom())
    assert answer is not None and answer.file == "undionly.kpxe"


def test_events_are_attributed_to_the_machine_by_mac_or_leased_address(tmp_path: Path) -> None:
    role, inventory, seen = _role(tmp_path, [0.0])
    inventory.put_machine(Machine(name="node1", mac=MAC), actor="test", reason="test")
    role._ip_to_mac["10.99.0.100"] = MAC
    role._on_tftp(TftpEvent(("10.99.0.100", 2070), "vmlinuz", "sent", 123, 1432, 1, 0.1))
    role._on_tftp(TftpEvent(("10.99.0.200", 2070), "nope", "not_found", 0, 512, 1, 0.0))
    assert [(o.action, o.target, o.outcome) for o in seen] == [
        ("boot.tftp", "machine/node1", "ok"),
        ("boot.tftp", "ip/10.99.0.200", "failed"),
    ]
    assert seen[0].details["client"] == "10.99.0.100:2070"


def test_due_wakes_combines_machine_and_group_schedules_once_each(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path / "inv", "discovered")
    (tmp_path / "inv" / "groups").mkdir(parents=True, exist_ok=True)
    (tmp_path / "inv" / "groups" / "lab.toml").write_text('wake_at = ["07:30"]\n')
    inventory.put_machine(Machine(name="a", mac=MAC, wake_at=("07:30",), groups=("lab",)), actor="t", reason="t")
    inventory.put_machine(Machine(name="b", mac="52:54:00:99:00:11", groups=("lab",)), actor="t", reason="t")
    inventory.put_machine(Machine(name="c", mac="52:54:00:99:00:12", wake_at=("09:00",)), actor="t", reason="t")
    inventory.refresh(wait=True)
    zone = datetime.now().astimezone().tzinfo
    since = datetime(2026, 11, 20, 7, 29, 30, tzinfo=zone).astimezone(UTC)
    now = datetime(2026, 11, 20, 7, 30, 10, tzinfo=zone).astimezone(UTC)
    assert sorted(m.name for m in due_wakes(inventory, since, now)) == ["a", "b"]
    assert due_wakes(inventory, now, now) == []


def test_a_network_booting_client_makes_the_link_advertise_ipv6_at_once(tmp_path: Path) -> None:
    from bramble.boot.dhcp import DhcpEvent
    from bramble.boot.role import _Link
    from bramble.config import BootInterfaceSettings

    class Advertiser:
        nudges = 0

        def nudge(self) -> None:
            self.nudges += 1

    role, _, seen = _role(tmp_path, [0.0])
    ra = Advertiser()
    link = _Link(BootInterfaceSettings(name="br0"), IPv4Interface("10.99.0.1/24"), None, None, ra)  # type: ignore[arg-type]
    role._links.append(link)
    on_event = role._dhcp_event_handler("br0")
    base = {
        "mac": MAC,
        "outcome": "offered",
        "yiaddr": "10.99.0.100",
        "client": ("0.0.0.0", 68),
        "giaddr": None,
        "xid": 1,
    }
    on_event(DhcpEvent(message_type="DISCOVER", ipxe=True, **base))  # type: ignore[arg-type]
    on_event(DhcpEvent(message_type="DISCOVER", **base))  # type: ignore[arg-type]  # not booting: no nudge
    on_event(DhcpEvent(message_type="REQUEST", ipxe=True, **base))  # type: ignore[arg-type]
    assert ra.nudges == 1
    # the first OFFER stands alone (its DISCOVER was sent again); the second joins the REQUEST's event
    assert [o.action for o in seen] == ["boot.dhcp"] * 2


def _dhcp(message_type: str, outcome: str, xid: int = 7, **extra: object) -> Any:
    from bramble.boot.dhcp import DhcpEvent

    fields = {"mac": MAC, "yiaddr": "10.99.0.100", "client": ("10.99.0.1", 67), "giaddr": "10.99.0.1", "xid": xid}
    return DhcpEvent(message_type=message_type, outcome=outcome, **{**fields, **extra})  # type: ignore[arg-type]


def test_a_whole_dhcp_exchange_is_one_audit_event(tmp_path: Path) -> None:
    clock = [100.0]
    role, _, seen = _role(tmp_path, clock)
    on_event = role._dhcp_event_handler("br0")
    on_event(_dhcp("DISCOVER", "offered", arch="bios"))
    assert seen == []  # held for its REQUEST
    on_event(_dhcp("REQUEST", "acked", boot_file="undionly.kpxe"))
    [event] = seen
    assert event.render is not None and event.message == ""  # formatted when the audit writer writes it
    event.realize()
    assert event.message == (
        f"DISCOVER from {MAC}: offered 10.99.0.100; REQUEST: acked 10.99.0.100 boot file undionly.kpxe"
    )
    assert event.details["offered"] == "10.99.0.100" and event.details["message_type"] == "REQUEST"
    assert event.details["arch"] == "bios" and event.details["boot_file"] == "undionly.kpxe"
    assert datetime.fromisoformat(event.details["offered_at"]).tzinfo is not None
    assert event.time is not None and role._exchanges is not None and role._exchanges.held == {}


def test_an_offer_nobody_requests_is_recorded_alone_with_its_own_time(tmp_path: Path) -> None:
    clock = [100.0]
    role, _, seen = _role(tmp_path, clock)
    on_event = role._dhcp_event_handler("br0")
    before = datetime.now(UTC)
    on_event(_dhcp("DISCOVER", "offered", xid=1))
    on_event(_dhcp("DISCOVER", "exhausted", xid=2, yiaddr=None))  # nothing offered: recorded at once
    on_event(_dhcp("REQUEST", "acked", xid=3))  # another exchange: does not take xid 1's offer
    assert [e.realize().details["xid"] for e in seen] == [2, 3]
    clock[0] += 1
    role._exchanges.release_expired()  # type: ignore[union-attr]
    assert len(seen) == 2  # still within the hold time
    clock[0] += 3
    role._exchanges.release_expired()  # type: ignore[union-attr]
    offer = seen[-1].realize()
    assert offer.message == f"DISCOVER from {MAC}: offered 10.99.0.100" and offer.details["xid"] == 1
    assert offer.time is not None and before <= offer.time <= datetime.now(UTC)


@pytest.mark.anyio
async def test_held_offers_are_recorded_when_the_role_closes(tmp_path: Path) -> None:
    role, _, seen = _role(tmp_path, [0.0])
    role._dhcp_event_handler("br0")(_dhcp("DISCOVER", "offered"))
    await role.close()
    assert [e.realize().details["outcome"] for e in seen] == ["offered"]


def test_a_dhcp_event_is_attributed_with_the_machine_its_boot_answer_looked_up(tmp_path: Path) -> None:
    role, inventory, seen = _role(tmp_path, [0.0])
    inventory.put_machine(Machine(name="node1", mac=MAC), actor="test", reason="test")
    inventory.refresh(wait=True)
    policy = PxePolicy(tftp_server=IPv4Address("10.99.0.1"), http_base="http://10.99.0.1:8471")
    choose = role._boot_answer_for(policy, BootInterfaceSettings(name="br0"))
    on_event = role._dhcp_event_handler("br0")
    choose(_ipxe_rom())
    on_event(_dhcp("REQUEST", "acked", xid=1))
    on_event(_dhcp("REQUEST", "acked", xid=2, mac="52:54:00:99:00:77"))  # no boot answer looked up for it
    assert [o.target for o in seen] == ["machine/node1", "mac/52:54:00:99:00:77"]
    assert role._packet_machine is None
