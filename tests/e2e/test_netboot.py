"""Bare-metal network boot, end to end: a QEMU guest (TCG, ``-boot n``) on a bridge served only by brambled.

Each test builds a fresh namespace with a bridge and a tap (tests/netboot_bed.py), runs a real brambled with
the ``api`` and ``boot`` roles inside it, registers the machine and its profile with the real CLI, powers the
guest on and waits for the guest's init to print its marker on the serial console. Then it asks the audit
log, through the CLI, what the machine did. Nothing leaves the namespace; everything is removed afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from tests.netboot_bed import (
    OTHER_SERVER_IP,
    SERVER_IP,
    BootDaemon,
    NetbootBed,
    boot_tree,
    netboot_available,
    netboot_bed,
    start_boot_daemon,
)
from tests.qemu_helpers import wait_for

BOOT_TIMEOUT = 240  # TCG on a busy 2-core machine; OVMF alone needs ~15 s when idle
GUEST_MAC = "52:54:00:99:00:10"
CMDLINE = "console=ttyS0 quiet"

pytestmark = pytest.mark.skipif(netboot_available() is not None, reason=str(netboot_available()))


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[NetbootBed]:
    with netboot_bed(tmp_path) as made:
        yield made


@pytest.fixture
def files(tmp_path: Path, guests: dict[str, Path]) -> Path:
    guest = guests["x86_64"]
    return boot_tree(tmp_path / "files", guest / "kernel", guest / "initrd.gz")


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"CLI failed: {done.stderr}{done.stdout}"
    return done.stdout


def _events(daemon: BootDaemon, target: str) -> list[dict[str, object]]:
    rows = json.loads(_ok(daemon.cli("event", "list", "--json", "--target", target, "--limit", "1000")))
    assert isinstance(rows, list)
    return rows


def _register(daemon: BootDaemon, *, transport: str = "http", name: str = "node1", mac: str = GUEST_MAC) -> None:
    _ok(
        daemon.cli(
            "profile",
            "add",
            f"tiny-{transport}",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.gz",
            "--cmdline",
            CMDLINE,
            "--transport",
            transport,
        )
    )
    _ok(daemon.cli("machine", "add", name, "--mac", mac, "--profile", f"tiny-{transport}", "--arch", "x86_64"))


def _boot_to_marker(
    bed: NetbootBed,
    files: Path,
    tmp_path: Path,
    *,
    firmware: str,
    transport: str = "http",
    mode: str = "authoritative",
    interface_toml: str = "",
) -> BootDaemon:
    """Start brambled, register node1 with a kernel profile, power the guest on and wait for its marker."""
    daemon = start_boot_daemon(
        bed,
        tmp_path / "state",
        files_dir=files,
        inventory_dir=tmp_path / "inventory",
        mode=mode,
        interface_toml=interface_toml,
    )
    _register(daemon, transport=transport)
    serial = tmp_path / "serial.log"
    guest = bed.boot_guest(firmware, serial, mac=GUEST_MAC)
    bed.wait_for_marker(guest, serial, BOOT_TIMEOUT)
    bed.stop(guest)
    return daemon


def test_bios_ipxe_rom_boots_kernel_and_initrd_over_http(bed: NetbootBed, files: Path, tmp_path: Path) -> None:
    daemon = _boot_to_marker(bed, files, tmp_path, firmware="bios", transport="http")

    def everything_recorded() -> list[dict[str, object]] | None:
        events = _events(daemon, "machine/node1")
        actions = {str(e["action"]) for e in events}
        return events if {"boot.dhcp", "boot.http"} <= actions else None

    events = wait_for(everything_recorded, deadline=15, what="DHCP and HTTP events for machine/node1")
    messages = "\n".join(str(e["message"]) for e in events)
    assert "ACK" in messages or "acked" in messages
    assert "/boot/52:54:00:99:00:10.ipxe" in messages
    assert "/files/vmlinuz" in messages and "/files/initrd.gz" in messages


def test_bios_ipxe_rom_boots_kernel_and_initrd_over_tftp(bed: NetbootBed, files: Path, tmp_path: Path) -> None:
    daemon = _boot_to_marker(bed, files, tmp_path, firmware="bios", transport="tftp")

    def tftp_recorded() -> list[dict[str, object]] | None:
        events = [e for e in _events(daemon, "machine/node1") if e["action"] == "boot.tftp"]
        return events if len(events) >= 2 else None

    events = wait_for(tftp_recorded, deadline=15, what="TFTP events for machine/node1")
    names = "\n".join(str(e["message"]) for e in events)
    assert "vmlinuz" in names and "initrd.gz" in names


def test_uefi_firmware_pxe_chainloads_ipxe_then_boots(bed: NetbootBed, files: Path, tmp_path: Path) -> None:
    """OVMF's own PXE client (no NIC ROM) gets snponly.efi by TFTP, which then gets the script."""
    daemon = _boot_to_marker(bed, files, tmp_path, firmware="uefi", transport="http")
    events = _events(daemon, "machine/node1")
    dhcp = [e for e in events if e["action"] == "boot.dhcp"]
    details = [e.get("after") or {} for e in dhcp]
    assert any(isinstance(d, dict) and d.get("arch") == "uefi-x64" for d in details), details
    tftp = [str(e["message"]) for e in events if e["action"] == "boot.tftp"]
    assert any("snponly.efi" in m for m in tftp), tftp


def test_unknown_pxe_client_becomes_a_discovered_machine(bed: NetbootBed, files: Path, tmp_path: Path) -> None:
    daemon = start_boot_daemon(bed, tmp_path / "state", files_dir=files, inventory_dir=tmp_path / "inventory")
    serial = tmp_path / "serial.log"
    guest = bed.boot_guest("bios", serial, mac="52:54:00:99:00:77")

    def discovered() -> dict[str, object] | None:
        machines = json.loads(_ok(daemon.cli("machine", "list", "--json")))
        rows = machines["items"]
        return next((m for m in rows if m["mac"] == "52:54:00:99:00:77"), None)

    machine = wait_for(discovered, deadline=BOOT_TIMEOUT, what="the unknown client in `machine list`")
    bed.stop(guest)
    assert machine["discovered"] is True
    assert (tmp_path / "inventory" / "machines" / f"{machine['name']}.toml").exists()
    assert any(e["action"] == "machine.discovered" for e in _events(daemon, f"machine/{machine['name']}"))


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_proxy_dhcp_beside_dnsmasq_boots_the_guest(
    bed: NetbootBed, files: Path, tmp_path: Path, firmware: Literal["bios", "uefi"]
) -> None:
    """dnsmasq (another server on the link) hands out the address; Bramble gives only the PXE answer
    (SeaBIOS with the NIC's iPXE ROM, and OVMF's own PXE client)."""
    other = bed.add_other_server_ns()
    conf = tmp_path / "site-dnsmasq.conf"
    conf.write_text(
        "port=0\ninterface=vo1\nbind-interfaces\n"
        "dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,10m\n"
        f"dhcp-leasefile={tmp_path}/site.leases\nno-ping\n"
    )
    bed.spawn(
        ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--log-facility=-"], tmp_path / "site.log", ns=other
    )
    daemon = _boot_to_marker(bed, files, tmp_path, firmware=firmware, mode="proxy")
    leases = (tmp_path / "site.leases").read_text()
    assert GUEST_MAC in leases and "10.99.0.5" in leases, leases
    events = _events(daemon, "machine/node1")
    dhcp = [e for e in events if e["action"] == "boot.dhcp"]
    assert dhcp, "no DHCP events recorded"
    for event in dhcp:
        after = event.get("after") or {}
        assert isinstance(after, dict)
        assert after.get("yiaddr") in (None, "0.0.0.0"), f"proxy handed out an address: {event}"
    assert SERVER_IP != OTHER_SERVER_IP


UDHCPC_SCRIPT = """#!/bin/sh
# busybox udhcpc hook: configure the address and note what we were given.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    echo "$1 ip=$ip serverid=$serverid" >> "$BRAMBLE_LEASE_OUT" ;;
esac
"""


def _udhcpc(bed: NetbootBed, client_ns: str, tmp_path: Path, requested: str | None = None) -> str:
    """One real DHCP exchange with busybox udhcpc in the client namespace; returns the address bound."""
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out = tmp_path / "udhcpc.out"
    out.unlink(missing_ok=True)
    args = ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2", "-s", str(script)]
    if requested:
        args += ["-r", requested]
    done = subprocess.run(
        bed.exec_args(*args, ns=client_ns),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BRAMBLE_LEASE_OUT": str(out)},
        check=False,
    )
    assert done.returncode == 0 and out.exists(), f"udhcpc got no lease: {done.stderr}"
    return out.read_text().split("ip=")[1].split()[0]


def test_reserved_lease_survives_a_brambled_restart_and_syslog_is_attributed(
    bed: NetbootBed, files: Path, tmp_path: Path
) -> None:
    mac = "52:54:00:99:00:42"
    client = bed.add_client_ns(mac)
    state = tmp_path / "state"
    daemon = start_boot_daemon(bed, state, files_dir=files, inventory_dir=tmp_path / "inventory")
    _ok(daemon.cli("machine", "add", "kiosk1", "--mac", mac, "--ip", "10.99.0.150"))
    # the inventory's fixed address becomes a DHCP reservation within a couple of seconds
    first = str(wait_for(lambda: (ip := _udhcpc(bed, client, tmp_path)) == "10.99.0.150" and ip, 20, "the reserved IP"))

    sent = bed.run(
        "logger", "--server", SERVER_IP, "--port", "514", "--udp", "--rfc5424", "-t", "kiosk", "hello", ns=client
    )
    assert sent.returncode == 0, sent.stderr

    def syslog_recorded() -> list[dict[str, object]] | None:
        rows = [e for e in _events(daemon, "machine/kiosk1") if e["action"] == "boot.syslog"]
        return rows or None

    rows = wait_for(syslog_recorded, deadline=15, what="the syslog line attributed to machine/kiosk1")
    assert "hello" in str(rows[-1]["message"])

    daemon.stop()
    daemon = start_boot_daemon(bed, state, files_dir=files, inventory_dir=tmp_path / "inventory")
    again = _udhcpc(bed, client, tmp_path, requested=first)
    assert again == first

    def acks() -> list[dict[str, object]] | None:
        rows = [e for e in _events(daemon, "machine/kiosk1") if e["action"] == "boot.dhcp"]
        acked = [e for e in rows if "acked" in str(e["message"])]
        return acked if len(acked) >= 2 else None  # one before the restart, one after

    wait_for(acks, deadline=15, what="DHCP ACK events from before and after the restart")


def test_bios_classic_pxe_chainloads_undionly_then_the_script(bed: NetbootBed, files: Path, tmp_path: Path) -> None:
    """Firmware PXE (the NIC ROM's PXE API) loads undionly.kpxe by TFTP; that iPXE gets the script."""
    daemon = _boot_to_marker(bed, files, tmp_path, firmware="bios", interface_toml="chainload_ipxe = true\n")
    events = _events(daemon, "machine/node1")
    sequence = [
        str(e["message"]) for e in events if e["action"] in ("boot.tftp", "boot.http") or "acked" in str(e["message"])
    ]
    loader = next(i for i, m in enumerate(sequence) if "undionly.kpxe: sent" in m)
    script = next(i for i, m in enumerate(sequence) if "GET /boot/52:54:00:99:00:10.ipxe -> 200" in m)
    assert loader < script, sequence
    assert "acked" in sequence[0] and "undionly.kpxe" in sequence[0], sequence
