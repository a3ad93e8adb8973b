"""Proxy-DHCP beside a real DHCP server: dnsmasq gives the address, Bramble only the PXE boot answer.

Three namespaces on one throwaway bridge: Bramble's ``ProxyDhcpServer`` (10.231.8.1), dnsmasq as the
site's ordinary DHCP server (10.231.8.2, addresses .100-.150, no PXE configuration at all), and a PXE
client whose packets are crafted with scapy (``pxe_probe.py``). Everything is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from tests.integration.boot.netns import Lan, lan

HERE = Path(__file__).parent
BRAMBLE_IP, DNSMASQ_IP = "10.231.8.1", "10.231.8.2"
HTTP_BASE = f"http://{BRAMBLE_IP}:8471"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq (Debian package dnsmasq-base)"),
]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Runner:
    """``dhcp_runner.py`` in one namespace; events read back from its JSON-lines file."""

    def __init__(self, ns: str, workdir: Path, *args: str) -> None:
        self.events_path = workdir / "events.jsonl"
        self.err = workdir / "runner.err"
        cmd = ["ip", "netns", "exec", ns, sys.executable, str(HERE / "dhcp_runner.py"), *args,
               "--events", str(self.events_path)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.err, "ab"))  # noqa: SIM115
        self.wait_for(lambda e: e.get("ready") is True)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.endswith("}")]

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if match(event):
                    return event
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited: {self.err.read_text()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"no matching event within {timeout}s: {self.events()}")


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Lan, Runner]]:
    with lan(3) as net:
        net.add_address(0, f"{BRAMBLE_IP}/24")
        net.add_address(1, f"{DNSMASQ_IP}/24")
        leases = tmp_path / "dnsmasq.leases"
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", net.hosts[1], "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", f"--interface={net.interface}", "--bind-interfaces", "--no-ping", "--log-dhcp",
             "--dhcp-range=10.231.8.100,10.231.8.150,255.255.255.0,10m", f"--dhcp-leasefile={leases}",
             "--pid-file=", "--user=root", "--group=root", f"--log-facility={tmp_path / 'dnsmasq.log'}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.err", "ab"),  # noqa: SIM115
        )  # fmt: skip
        runner: Runner | None = None
        try:
            runner = Runner(net.hosts[0], tmp_path, "--mode", "proxy", "--interface", net.interface,
                            "--server-ip", BRAMBLE_IP, "--http-base", HTTP_BASE)  # fmt: skip
            assert dnsmasq.poll() is None, (tmp_path / "dnsmasq.err").read_text()
            yield net, runner
        finally:
            if runner is not None:
                stop(runner.proc)
            stop(dnsmasq)


def probe(net: Lan, arch: int) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", net.hosts[2], sys.executable, str(HERE / "pxe_probe.py"), "--iface", net.interface,
         "--arch", str(arch)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("arch", "arch_name", "loader"), [(7, "uefi-x64", "snponly.efi"), (0, "bios", "undionly.kpxe")]
)
def test_dnsmasq_address_plus_bramble_boot_file(
    network: tuple[Lan, Runner], arch: int, arch_name: str, loader: str
) -> None:
    net, runner = network
    result = probe(net, arch)
    offers = result["offers"]
    address = [o for o in offers if o["yiaddr"] != "0.0.0.0"]
    proxy = [o for o in offers if o["yiaddr"] == "0.0.0.0"]
    assert address and all(o["options"]["server_id"] == DNSMASQ_IP for o in address), offers
    assert proxy and all(o["options"]["server_id"] == BRAMBLE_IP for o in proxy), offers
    # Bramble never offers an address; dnsmasq (configured without any PXE) never offers a boot file.
    assert all(o["options"]["server_id"] != BRAMBLE_IP for o in address)
    assert all(o["file"] == "" for o in address)
    offer = proxy[0]
    assert offer["siaddr"] == BRAMBLE_IP and offer["file"] == loader
    assert bytes.fromhex(offer["options"]["vendor_class_id"]) == b"PXEClient"
    assert offer["options"]["vendor_specific"] == "060108ff"
    assert offer["options"]["pxe_client_machine_identifier"] == "00" + result["uuid"]

    ack = result["acks"][0]
    assert ack["options"]["server_id"] == DNSMASQ_IP
    assert IPv4Address(ack["yiaddr"]) in [IPv4Address(f"10.231.8.{n}") for n in range(100, 151)]

    boot = result["boot_ack"]  # the PXE boot-server REQUEST to port 4011, answered unicast
    assert result["boot_ack_from"] == [BRAMBLE_IP, 4011]
    assert boot["yiaddr"] == "0.0.0.0" and boot["siaddr"] == BRAMBLE_IP and boot["file"] == loader
    assert boot["options"]["message-type"] == "5" and boot["options"]["vendor_specific"] == "4704800000" + "00ff"

    mac = result["mac"]
    offered = runner.wait_for(lambda e: e.get("mac") == mac and e.get("port") == 67 and e.get("outcome") == "offered")
    acked = runner.wait_for(lambda e: e.get("mac") == mac and e.get("port") == 4011 and e.get("outcome") == "acked")
    for event in (offered, acked):
        assert event["mode"] == "proxy" and event["arch"] == arch_name and event["boot_file"] == loader
        assert event["yiaddr"] is None and event["interface"] == net.interface and not event["ipxe"]
        assert event["vendor_class"].startswith("PXEClient:Arch:")
    assert acked["client"][0] == ack["yiaddr"]
    # The client's REQUEST to dnsmasq reached us too (broadcast) and was left alone.
    assert all(e.get("outcome") in ("offered", "acked", "ignored") for e in runner.events() if "outcome" in e)
    assert not any(e.get("yiaddr") for e in runner.events())
