"""Floating IPs end to end: brambled in a throwaway network namespace (the "host"), a TCG guest on a
private network, a public network whose uplink is a veth to a client namespace (the "outside").

Through the real CLI: ``fip create --net public``, ``fip attach``. The client pings the guest at the
floating address (DNAT in), and the guest's own TCP probes (``bramble.probe=``, busybox nc) reach the
client's listener with the floating address as their source (SNAT out). A daemon killed with -9 whose
mapping is lost meanwhile puts it back at start. After ``fip detach`` the floating address no longer
answers and the uplink no longer holds it. Everything is removed afterwards, also on
failure: the listener by PID, the client namespace (its veth goes with it), then the daemon's fixture.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_vm_network import NsDaemon, console_of, ns_daemon
from tests.qemu_helpers import wait_for

__all__ = ["ns_daemon"]  # the fixture, imported so pytest finds it here

HOST_SIDE = "198.51.100.1"  # the daemon namespace's address on the uplink (the public network's gateway)
CLIENT = "198.51.100.254"
LISTEN_PORT = 7000

# A TCP listener in the client namespace: writes each peer's address to a file, greets it like the
# guest's `bramble.listen` (so the guest's probe prints "ok").
LISTENER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[2])))
server.listen(16)
while True:
    conn, (peer, _) = server.accept()
    with open(sys.argv[1], "a") as out:
        out.write(peer + "\\n")
    conn.sendall(b"BRAMBLE-NC-HELLO\\n")
    conn.close()
"""


class Outside:
    """A client namespace joined to the daemon's namespace by a veth: the public side."""

    def __init__(self, tmp_path: Path) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"bfo{tag}"
        self.uplink = f"bfu{tag}"  # in the daemon's namespace: the public network's uplink
        self.peers = tmp_path / "peers.txt"
        self.peers.touch()
        self.listener: subprocess.Popen[bytes] | None = None

    def setup(self, d: NsDaemon) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True, timeout=15)
        self._check(d.run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "eth0", "netns", self.ns))
        self._check(d.run("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", self.uplink))
        self._check(d.run("ip", "link", "set", self.uplink, "up"))
        self._check(self.run("ip", "link", "set", "lo", "up"))
        self._check(self.run("ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0"))
        self._check(self.run("ip", "link", "set", "eth0", "up"))

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> None:
        assert done.returncode == 0, (done.args, done.stdout, done.stderr)

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True, timeout=timeout)

    def listen(self) -> None:
        self.listener = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", LISTENER, str(self.peers), str(LISTEN_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: f":{LISTEN_PORT}" in self.run("ss", "-Hltn").stdout, 30, "the client's listener")

    def pings(self, address: str) -> bool:
        done = self.run("busybox", "ping", "-c", "1", "-W", "2", address)
        assert f"PING {address}" in done.stdout, (done.stdout, done.stderr)  # ping itself ran
        return done.returncode == 0

    def close(self) -> None:
        if self.listener is not None and self.listener.poll() is None:
            self.listener.kill()  # `ip netns exec` execs, so this PID is the listener's own
            self.listener.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False, timeout=30)


@pytest.fixture
def outside(ns_daemon: NsDaemon, tmp_path: Path) -> Iterator[Outside]:
    side = Outside(tmp_path)
    try:
        side.setup(ns_daemon)
        yield side
    finally:
        with contextlib.suppress(Exception):
            side.close()


def test_floating_ip_in_and_out_then_detached(ns_daemon: NsDaemon, outside: Outside, guests: dict[str, Path]) -> None:
    d = ns_daemon
    guest = guests["x86_64"]
    outside.listen()
    d.ok("image", "import", str(guest / "disk.qcow2"), "-n", "fipguest", "--kernel", str(guest / "kernel"),
         "--initrd", str(guest / "initrd.gz"),
         "--cmdline", f"quiet panic=-1 bramble.net=dhcp bramble.probe={CLIENT}:{LISTEN_PORT}")  # fmt: skip
    d.ok("net", "create", "lan", "--cidr", "10.78.0.0/24")  # no NAT: only the floating IP gets it out
    public = json.loads(
        d.ok("net", "create", "public", "--cidr", "198.51.100.0/24", "--gateway", HOST_SIDE,
             "--uplink", outside.uplink, "--json")
    )  # fmt: skip
    assert public["uplink"] == outside.uplink
    # the outside may ping the guest (the default group admits only its members otherwise)
    d.ok("secgroup", "rule", "add", "default", "--direction", "ingress", "--protocol", "icmp",
         "--cidr", "198.51.100.0/24")  # fmt: skip
    vm = json.loads(
        d.ok("vm", "create", "g1", "-i", "fipguest", "--cpus", "1", "-m", "256", "--disk-size", "1",
             "--net", "lan", "--json")
    )  # fmt: skip
    [nic] = vm["nics"]
    assert vm["state"] == "running" and nic["address"] == "10.78.0.2", vm

    def networked() -> str | None:
        text = console_of(d, vm["id"])
        return text if "BRAMBLE-GUEST-PING" in text or "BRAMBLE-GUEST-NET failed" in text else None

    console = wait_for(networked, 240, "the guest's DHCP result on its console", interval=0.5)
    assert "BRAMBLE-GUEST-NET ip=10.78.0.2 router=10.78.0.1" in console, console[-2000:]
    # Without a floating IP the outside cannot reach the guest and hears nothing from it.
    assert not outside.pings("10.78.0.2")

    fip = json.loads(d.ok("fip", "create", "--net", "public", "--json"))
    address = fip["address"]
    assert address == "198.51.100.2", fip  # IPAM: the first host after the gateway
    assert d.ok("fip", "attach", address, "g1") == f"floating IP {address} -> g1 nic0 10.78.0.2\n"
    assert f"floating {address}" in d.ok("vm", "show", "g1")
    assert f"{address}/32" in d.run("ip", "-4", "addr", "show", "dev", outside.uplink).stdout
    nat = d.run("nft", "list", "table", "ip", "bramble_nat").stdout
    assert "dnat to 10.78.0.2" in nat and f"snat to {address}" in nat, nat

    # In: the outside pings the floating address and the guest answers.
    wait_for(lambda: outside.pings(address), 60, f"the guest to answer pings at {address}", interval=0.5)
    # Out: the guest's own probes reach the outside from the floating address, and get the greeting.
    wait_for(lambda: address in outside.peers.read_text().split(), 90, f"a probe from {address}", interval=0.5)
    assert set(outside.peers.read_text().split()) == {address}  # never the private address
    probe_ok = re.compile(r"BRAMBLE-GUEST-PROBE \d+ ok")
    wait_for(lambda: probe_ok.search(console_of(d, vm["id"])), 60, "a successful probe on the console", interval=0.5)

    # kill -9, and the mapping lost meanwhile (rules flushed, address gone): the agent's start applies it.
    d.kill9()
    for chain in ("fip-pre", "fip-out", "fip-post"):
        assert d.run("nft", "flush", "chain", "ip", "bramble_nat", chain).returncode == 0
    assert d.run("ip", "addr", "del", f"{address}/32", "dev", outside.uplink).returncode == 0
    assert not outside.pings(address)
    d.start()
    wait_for(lambda: outside.pings(address), 60, f"{address} to answer after a restart", interval=0.5)
    assert d.run("ip", "-4", "addr", "show", "dev", outside.uplink).stdout.count(f"{address}/32") == 1
    assert "could not apply the floating IPs" not in d.log.read_text()

    # Detached: the floating address no longer answers and leaves the uplink; it stays allocated.
    assert d.ok("fip", "detach", address) == f"floating IP {address} detached\n"
    assert f"{address}/32" not in d.run("ip", "-4", "addr", "show", "dev", outside.uplink).stdout
    assert "dnat to 10.78.0.2" not in d.run("nft", "list", "table", "ip", "bramble_nat").stdout
    wait_for(lambda: not outside.pings(address), 30, f"{address} to stop answering", interval=0.5)
    listed = json.loads(d.ok("fip", "list", "--json"))
    assert [(f["address"], f["vm"]) for f in listed] == [(address, None)]

    # Attached again, then the VM goes: the mapping goes with it, the address stays with the project.
    d.ok("fip", "attach", address, "g1")
    wait_for(lambda: outside.pings(address), 60, f"the guest to answer at {address} again", interval=0.5)
    d.ok("vm", "delete", "g1", "--yes")
    assert f"{address}/32" not in d.run("ip", "-4", "addr", "show", "dev", outside.uplink).stdout
    assert json.loads(d.ok("fip", "show", address, "--json"))["vm"] is None
    refused = d.cli("net", "delete", "public")
    assert refused.returncode == 2 and f"holds floating IP(s) {address}" in refused.stderr, refused.stderr
    d.ok("fip", "delete", address)
    d.ok("net", "delete", "public")
    d.ok("net", "delete", "lan")
