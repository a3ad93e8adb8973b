"""A VM network end to end: brambled (inside a throwaway network namespace, so its bridge, taps
and nftables tables live only there) creates a network and a QEMU (TCG) guest on it through the
real CLI; the guest's busybox ``udhcpc`` gets its IPAM-assigned address from Bramble's DHCP
server and pings the gateway (read from its console). Everything is removed afterwards, also
on failure: the daemon and QEMU by PID, then the namespace with whatever is left in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bramble.compute.qemu.cmdline import RuntimePaths
from tests.e2e.conftest import kill_qemus
from tests.qemu_helpers import wait_for

API_PORT = 8470  # the namespace has its own port space
VENV_BIN = Path(sys.executable).parent


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, taps)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    if not Path("/proc/sys/net/bridge").exists():
        return "br_netfilter is not loaded (modprobe br_netfilter)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    return None


@dataclass
class NsDaemon:
    ns: str
    state_dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "bramble.daemon", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"brambled exited with {proc.returncode}:\n{self.log.read_text()[-3000:]}")
            return (self.state_dir / "admin.token").exists() and self.cli("health", timeout=30).returncode == 0

        wait_for(healthy, 90, "brambled to answer inside the namespace", interval=0.5)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def kill9(self) -> None:
        """``ip netns exec`` execs the daemon, so this PID is brambled's own."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def dhcp_listeners(self) -> str:
        return self.run("ss", "-H", "-uln", "sport", "= :67").stdout

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        token = (self.state_dir / "admin.token").read_text().strip()
        bramble = str(VENV_BIN / "bramble")
        url = f"http://127.0.0.1:{API_PORT}"
        return self.run(bramble, "--url", url, "--token", token, *args, timeout=timeout)

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr, self.log.read_text()[-3000:])
        return done.stdout

    def link_exists(self, name: str) -> bool:
        return self.run("ip", "link", "show", "dev", name).returncode == 0


@pytest.fixture
def ns_daemon(tmp_path: Path) -> Iterator[NsDaemon]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    ns = f"bvm{secrets.token_hex(4)}"
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "brambled.toml"
    config.write_text(
        f'state_dir = "{state}"\nnode_name = "e2e-net"\n'
        f'[api]\nhost = "127.0.0.1"\nport = {API_PORT}\n'
        '[compute]\naccel = "tcg"\nstop_timeout_seconds = 5\n'
        "[agent]\nreconcile_interval_seconds = 2\n"
        '[network]\ndriver = "bridge"\n'
    )
    daemon = NsDaemon(ns, state, config, tmp_path / "brambled.log")
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=15)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=15)
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        with contextlib.suppress(Exception):
            kill_qemus(state)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)


def console_of(daemon: NsDaemon, vm_id: str) -> str:
    path = RuntimePaths.for_vm(daemon.state_dir / "run", vm_id).console_log
    return path.read_text(errors="replace") if path.exists() else ""


def dhcp_answers(d: NsDaemon, bridge: str, macs_to_try: list[str]) -> dict[str, str]:
    """Run busybox udhcpc in a child namespace on a veth in ``bridge``, once per MAC; what each got.

    The port is not named "bt-": the anti-spoofing table would drop an unknown tap's frames first.
    """
    child = f"bvc{secrets.token_hex(4)}"
    port = f"bs{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", child], check=True, timeout=15)
    results: dict[str, str] = {}
    try:
        assert d.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", child).returncode == 0
        assert d.run("ip", "link", "set", port, "master", bridge, "up").returncode == 0
        for mac in macs_to_try:
            subprocess.run(["ip", "-n", child, "link", "set", "eth0", "down"], check=True, timeout=15)
            subprocess.run(["ip", "-n", child, "link", "set", "eth0", "address", mac], check=True, timeout=15)
            subprocess.run(["ip", "-n", child, "link", "set", "eth0", "up"], check=True, timeout=15)
            client = subprocess.run(
                ["ip", "netns", "exec", child, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "4", "-T", "1",
                 "-s", "/bin/true"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            results[mac] = client.stdout + client.stderr
    finally:
        d.run("ip", "link", "del", port)
        subprocess.run(["ip", "netns", "del", child], capture_output=True, check=False, timeout=30)
    return results


def test_guest_gets_its_ipam_address_by_dhcp_and_pings_the_gateway(
    ns_daemon: NsDaemon, guests: dict[str, Path]
) -> None:
    d = ns_daemon
    guest = guests["x86_64"]
    d.ok(
        "image",
        "import",
        str(guest / "disk.qcow2"),
        "-n",
        "netguest",
        "--kernel",
        str(guest / "kernel"),
        "--initrd",
        str(guest / "initrd.gz"),
        "--cmdline",
        "quiet panic=-1 bramble.net=dhcp",
    )
    net = json.loads(d.ok("net", "create", "lan", "--cidr", "10.77.0.0/24", "--dns", "10.77.0.1", "--nat", "--json"))
    assert net["gateway"] == "10.77.0.1" and net["nat"] is True

    # Take the first address with a fixed-address VM that is never started, so the guest's
    # address is an IPAM decision (.3), not just the first host.
    d.ok(
        "vm",
        "create",
        "holder",
        "-i",
        "netguest",
        "--cpus",
        "1",
        "-m",
        "128",
        "--disk-size",
        "1",
        "--net",
        "lan:10.77.0.2",
        "--no-start",
    )
    vm = json.loads(
        d.ok(
            "vm",
            "create",
            "g1",
            "-i",
            "netguest",
            "--cpus",
            "1",
            "-m",
            "256",
            "--disk-size",
            "1",
            "--net",
            "lan",
            "--json",
        )
    )
    assert vm["state"] == "running", vm
    [nic] = vm["nics"]
    assert (nic["network"], nic["address"]) == ("lan", "10.77.0.3")
    assert d.link_exists(net["bridge"]) and d.link_exists(nic["tap"])

    def pinged() -> str | None:
        text = console_of(d, vm["id"])
        return text if re.search(r"BRAMBLE-GUEST-PING \w+", text) or "BRAMBLE-GUEST-NET failed" in text else None

    console = wait_for(pinged, 240, "the guest's DHCP and ping result on its console", interval=0.5)
    assert f"BRAMBLE-GUEST-NET ip={nic['address']} router=10.77.0.1" in console, console[-2000:]
    assert "BRAMBLE-GUEST-PING ok router=10.77.0.1" in console, console[-2000:]
    assert re.search(r"3 packets transmitted, 3 packets received", console), console[-2000:]

    shown = d.ok("vm", "show", "g1")
    assert nic["mac"] in shown and nic["address"] in shown
    assert f"%{net['bridge']}:67" in d.dhcp_listeners()
    nat = d.run("nft", "list", "table", "ip", "bramble_nat").stdout
    assert "10.77.0.0/24" in nat and "masquerade" in nat, nat
    # Exactly IPAM's leases: the guest's MAC (borrowed by a real client on the bridge) gets the
    # guest's address; a MAC IPAM never chose gets nothing, however long it asks.
    stranger = "02:00:00:00:77:01"
    answers = dhcp_answers(d, net["bridge"], [nic["mac"], stranger])
    assert f"lease of {nic['address']} obtained" in answers[nic["mac"]], answers
    assert "no lease" in answers[stranger] and "obtained" not in answers[stranger], answers

    # Security groups, live: the default group admits only its members, so the host side of the
    # bridge (10.77.0.1) cannot ping the guest; a rule makes it answer, removing it stops it again.
    def host_pings_guest() -> bool:
        done = d.run("busybox", "ping", "-c", "2", "-W", "2", nic["address"])
        assert f"PING {nic['address']}" in done.stdout, (done.stdout, done.stderr)  # ping itself ran
        return done.returncode == 0

    assert not host_pings_guest()
    group = json.loads(
        d.ok("secgroup", "rule", "add", "default", "--direction", "ingress", "--protocol", "icmp",
             "--cidr", "10.77.0.0/24", "--json")
    )  # fmt: skip
    assert host_pings_guest()
    icmp = next(r["id"] for r in group["rules"] if r["protocol"] == "icmp")
    d.ok("secgroup", "rule", "delete", "default", icmp)
    assert not host_pings_guest()

    # kill -9 and start again: the running guest is adopted and its network's DHCP server
    # comes back (the agent re-plugs what should run; taps and bridge survived in the kernel).
    pid_before = json.loads(d.ok("vm", "show", "g1", "--json"))["pid"]
    d.kill9()
    assert d.link_exists(nic["tap"])
    d.start()
    wait_for(lambda: f"%{net['bridge']}:67" in d.dhcp_listeners(), 60, "the DHCP server after a restart")
    assert json.loads(d.ok("vm", "show", "g1", "--json"))["pid"] == pid_before

    refused = d.cli("net", "delete", "lan")
    assert refused.returncode == 2 and "in use by VM(s) g1, holder" in refused.stderr, refused.stderr

    d.ok("vm", "delete", "g1", "--yes")
    d.ok("vm", "delete", "holder", "--yes")
    assert not d.link_exists(nic["tap"]) and not d.link_exists(net["bridge"])
    d.ok("net", "delete", "lan")
