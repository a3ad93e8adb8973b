"""DhcpServer on real sockets: a codec client on 127.0.0.1, then busybox udhcpc and ISC dhclient over a veth.

The veth tests run in two namespaces created (and deleted) per test, on the private 10.231.7.0/24 that
exists only inside them; the server is a subprocess (``dhcp_runner.py``) stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from tests.integration.boot.netns import NetnsPair, netns_pair

from bramble.boot.dhcp import DhcpConfig, DhcpEvent, DhcpServer
from bramble.boot.leases import LeaseStore
from bramble.proto.dhcp import DHCPACK, DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DhcpPacket, decode, encode, option_ip

HERE = Path(__file__).parent
SUBNET = "10.231.7.0/24"
SERVER_IP = "10.231.7.1"
ROUTER = "10.231.7.254"
DNS = "10.231.7.53"
MAC_1, MAC_2, MAC_3 = "02:42:b7:00:00:01", "02:42:b7:00:00:02", "02:42:b7:00:00:03"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and SO_BINDTODEVICE need root")


# -- loopback: the server's datagram path, relay addressing, stats and events ------------------------


@pytest.mark.anyio
async def test_relayed_dora_malformed_and_exhaustion_on_loopback(tmp_path: Path) -> None:
    config = DhcpConfig(
        server_ip=IPv4Address("127.0.0.1"),
        subnet=IPv4Network("127.0.0.0/24"),
        range_start=IPv4Address("127.0.0.10"),
        range_end=IPv4Address("127.0.0.10"),
        router=IPv4Address("127.0.0.1"),
    )
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    relay.settimeout(5)
    events: list[DhcpEvent] = []
    store = LeaseStore(tmp_path / "leases.json", config.pool())
    server = DhcpServer(
        config,
        store,
        interface=None,
        host="127.0.0.1",
        port=0,
        relay_port=relay.getsockname()[1],
        on_event=events.append,
    )
    await server.start()
    try:
        target = ("127.0.0.1", server.port)

        def exchange(mtype: int, mac: bytes, options: dict[int, bytes]) -> DhcpPacket:
            pkt = DhcpPacket(xid=0x1234, chaddr=mac, giaddr=IPv4Address("127.0.0.1"), hops=1, options=options)
            relay.sendto(encode(pkt), target)
            data, _ = relay.recvfrom(2048)  # blocking (5 s timeout) in a thread; the server runs on our loop
            return decode(data)

        async def roundtrip(mtype: int, mac: bytes, **options: bytes) -> DhcpPacket:
            opts = {53: bytes((mtype,)), **{int(k[1:]): v for k, v in options.items()}}
            return await anyio.to_thread.run_sync(exchange, mtype, mac, opts)

        offer = await roundtrip(DHCPDISCOVER, b"\x02\0\0\0\0\x01")
        assert offer.message_type == DHCPOFFER and offer.yiaddr == IPv4Address("127.0.0.10")
        ack = await roundtrip(DHCPREQUEST, b"\x02\0\0\0\0\x01", o50=offer.yiaddr.packed, o54=option_ip("127.0.0.1"))
        assert ack.message_type == DHCPACK and ack.giaddr == IPv4Address("127.0.0.1")

        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"\x01garbage", target)
        sender.sendto(
            encode(
                DhcpPacket(
                    chaddr=b"\x02\0\0\0\0\x02", giaddr=IPv4Address("127.0.0.1"), options={53: bytes((DHCPDISCOVER,))}
                )
            ),
            target,
        )
        sender.close()
        with anyio.fail_after(5):
            while len(events) < 3:
                await anyio.sleep(0.01)
        assert server.stats["malformed"] == 1 and server.stats["offers"] == 1 and server.stats["acks"] == 1
        assert [e.outcome for e in events] == ["offered", "acked", "exhausted"]
        assert events[1].yiaddr == "127.0.0.10" and events[2].mac == "02:00:00:00:00:02"
    finally:
        await server.close()
        relay.close()


# -- veth + real clients ------------------------------------------------------------------------------


class ServerProcess:
    """The runner in the server namespace; events are read back from its JSON-lines file."""

    def __init__(self, pair: NetnsPair, workdir: Path, quarantine: float = 300) -> None:
        self.pair, self.workdir, self.quarantine = pair, workdir, quarantine
        self.events_path = workdir / "events.jsonl"
        self.lease_file = workdir / "leases.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.events_path.unlink(missing_ok=True)
        cmd = [
            "ip", "netns", "exec", self.pair.server_ns, sys.executable, str(HERE / "dhcp_runner.py"),
            "--interface", self.pair.server_if, "--server-ip", SERVER_IP, "--subnet", SUBNET,
            "--range-start", "10.231.7.10", "--range-end", "10.231.7.20", "--router", ROUTER, "--dns", DNS,
            "--lease-seconds", "1200", "--quarantine-seconds", str(self.quarantine),
            "--lease-file", str(self.lease_file), "--events", str(self.events_path),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "server.err", "ab"))  # noqa: SIM115
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
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited: {(self.workdir / 'server.err').read_text()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"no matching event within {timeout}s: {self.events()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


UDHCPC_SCRIPT = """#!/bin/sh
echo "$1 ip=$ip subnet=$subnet router=$router dns=$dns lease=$lease serverid=$serverid" >> "$BRAMBLE_LEASE_OUT"
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$subnet" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
"""

DHCLIENT_SCRIPT = """#!/bin/sh
# dhclient runs its script with a clean environment, so the output path is written in.
echo "$reason ip=$new_ip_address subnet=$new_subnet_mask router=$new_routers dns=$new_domain_name_servers \
lease=$new_dhcp_lease_time serverid=$new_dhcp_server_identifier" >> "{out}"
exit 0
"""


def parse_line(line: str) -> dict[str, str]:
    head, *pairs = line.split()
    fields = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    fields["event"] = head
    return fields


@pytest.fixture
def veth(tmp_path: Path) -> Iterator[tuple[NetnsPair, ServerProcess]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    with netns_pair(f"{SERVER_IP}/24", MAC_1) as pair:
        server = ServerProcess(pair, tmp_path)
        try:
            server.start()
            yield pair, server
        finally:
            server.stop()


def udhcpc(pair: NetnsPair, tmp_path: Path, *, release: bool) -> dict[str, str]:
    """One lease with busybox udhcpc; with ``release`` it stays up until SIGTERM and then sends RELEASE.

    (``-q -R`` does not release in busybox 1.35: it quits before entering the BOUND state.)
    """
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out = tmp_path / "udhcpc.out"
    out.unlink(missing_ok=True)
    cmd = ["ip", "netns", "exec", pair.client_ns, "busybox", "udhcpc", "-i", pair.client_if, "-n", "-f",
           "-t", "5", "-T", "1", "-s", str(script)] + (["-R"] if release else ["-q"])  # fmt: skip
    env = {**os.environ, "BRAMBLE_LEASE_OUT": str(out)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        bound: list[dict[str, str]] = []
        deadline = time.monotonic() + 20
        while not bound and time.monotonic() < deadline and proc.poll() is None:
            if out.exists():
                bound = [parse_line(line) for line in out.read_text().splitlines() if line.startswith("bound")]
            time.sleep(0.02)
        if not bound and out.exists():  # exited (-q) right after the script ran
            bound = [parse_line(line) for line in out.read_text().splitlines() if line.startswith("bound")]
        if release:
            proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert len(bound) == 1, f"{stderr}\n{out.read_text() if out.exists() else ''}"
    return bound[0]


needs_busybox = pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (Debian package busybox)")


@needs_root
@needs_busybox
def test_udhcpc_lease_quarantine_and_restart(veth: tuple[NetnsPair, ServerProcess], tmp_path: Path) -> None:
    pair, server = veth
    first = udhcpc(pair, tmp_path, release=True)
    assert first["ip"] == "10.231.7.10" and first["subnet"] == "255.255.255.0"
    assert first["router"] == ROUTER and first["dns"] == DNS and first["lease"] == "1200"
    assert first["serverid"] == SERVER_IP
    server.wait_for(lambda e: e.get("outcome") == "released" and e.get("mac") == MAC_1)

    pair.set_client_mac(MAC_2)  # a different machine within the quarantine
    second = udhcpc(pair, tmp_path, release=False)
    assert second["ip"] == "10.231.7.11"
    journal = [json.loads(line) for line in server.lease_file.read_text().splitlines()[1:]]
    latest = {r["ip"]: r for r in journal}  # the journal's last record per address is its state
    assert {(r["mac"], r["ip"], r["state"]) for r in latest.values()} == {
        (MAC_1, "10.231.7.10", "released"),
        (MAC_2, "10.231.7.11", "bound"),
    }

    server.stop()  # the lease survives a restart of the server process
    server.start()
    again = udhcpc(pair, tmp_path, release=False)
    assert again["ip"] == "10.231.7.11"
    pair.set_client_mac(MAC_1)
    back = udhcpc(pair, tmp_path, release=False)
    assert back["ip"] == "10.231.7.10"  # the first machine gets its released address back
    assert all(e.get("outcome") != "unsent" for e in server.events())


@needs_root
@pytest.mark.skipif(shutil.which("dhclient") is None, reason="needs dhclient (Debian package isc-dhcp-client)")
def test_dhclient_gets_a_lease(veth: tuple[NetnsPair, ServerProcess], tmp_path: Path) -> None:
    pair, server = veth
    pair.set_client_mac(MAC_3)
    script = tmp_path / "dhclient.sh"
    out = tmp_path / "dhclient.out"
    script.write_text(DHCLIENT_SCRIPT.format(out=out))
    script.chmod(0o755)
    cmd = ["ip", "netns", "exec", pair.client_ns, "dhclient", "-d", "-1", "-cf", "/dev/null", "-sf", str(script),
           "-lf", str(tmp_path / "dhclient.leases"), "-pf", str(tmp_path / "dhclient.pid"), pair.client_if]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        bound: list[dict[str, str]] = []
        while not bound and time.monotonic() < deadline and proc.poll() is None:
            if out.exists():
                bound = [parse_line(line) for line in out.read_text().splitlines() if line.startswith("BOUND")]
            time.sleep(0.05)
        assert bound, out.read_text() if out.exists() else "no script output"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    lease = bound[0]
    assert lease["ip"] == "10.231.7.10" and lease["subnet"] == "255.255.255.0"
    assert lease["router"] == ROUTER and lease["dns"] == DNS and lease["lease"] == "1200"
    assert lease["serverid"] == SERVER_IP
    server.wait_for(lambda e: e.get("outcome") == "acked" and e.get("mac") == MAC_3)
