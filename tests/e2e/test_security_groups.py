"""Security groups between real guests: brambled inside a throwaway namespace (the harness of
test_vm_network), three QEMU (TCG) busybox guests on one network.

S serves TCP 22 (``bramble.listen=22``: busybox ``nc`` answers every connection with a line); A and B
each try a TCP connection to S every ~2 s (``bramble.probe=S:22``) and print ``BRAMBLE-GUEST-PROBE <n>
ok|fail`` on their consoles. S's group admits nothing at first; then tcp/22 from the members of A's group;
then that rule is deleted. After each change only probe lines printed after it count, and the first of
them is skipped (it may have started before the change). The guests are never restarted: same QEMU PIDs,
one boot line each, probe counters still climbing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.test_vm_network import NsDaemon, console_of, ns_daemon
from tests.qemu_helpers import wait_for

__all__ = ["ns_daemon"]  # the fixture, imported so pytest finds it here

SIZE = ("--cpus", "1", "-m", "128", "--disk-size", "1")
SERVER_IP = "10.79.0.10"
PROBE = re.compile(r"BRAMBLE-GUEST-PROBE (\d+) (ok|fail)")
SETTLED = 3  # consecutive probe results (after the skipped first one) that must all agree


def probes_after(d: NsDaemon, vm_id: str, offset: int) -> list[tuple[int, str]]:
    """The probe results printed on the console after byte ``offset``."""
    text = console_of(d, vm_id)[offset:]
    return [(int(n), result) for n, result in PROBE.findall(text)]


def settled(d: NsDaemon, vm_id: str, offset: int) -> Callable[[], str | None]:
    """A predicate: after ``offset``, skip one probe, then the next SETTLED agree; returns ok|fail."""

    def check() -> str | None:
        results = [r for _, r in probes_after(d, vm_id, offset)[1 : 1 + SETTLED]]
        if len(results) < SETTLED:
            return None
        assert len(set(results)) == 1, f"probes of {vm_id} after the change disagree: {results}"
        return results[0]

    return check


def test_tcp_22_only_from_the_remote_group_live(ns_daemon: NsDaemon, guests: dict[str, Path]) -> None:
    d = ns_daemon
    guest = guests["x86_64"]
    for image, switch in (("sgserver", "bramble.listen=22"), ("sgprobe", f"bramble.probe={SERVER_IP}:22")):
        cmdline = f"quiet panic=-1 bramble.net=dhcp {switch}"
        d.ok("image", "import", str(guest / "disk.qcow2"), "-n", image, "--kernel", str(guest / "kernel"),
             "--initrd", str(guest / "initrd.gz"), "--cmdline", cmdline)  # fmt: skip
    d.ok("net", "create", "lan", "--cidr", "10.79.0.0/24")
    for group in ("srv", "ga", "gb"):  # none is `default`, whose members would admit each other
        d.ok("secgroup", "create", group)
        d.ok("secgroup", "rule", "add", group, "--direction", "egress", "--cidr", "0.0.0.0/0")

    def create(name: str, image: str, group: str, *net: str) -> dict[str, Any]:
        vm = json.loads(d.ok("vm", "create", name, "-i", image, *SIZE, "--net", ":".join(("lan", *net)),
                             "-g", group, "--json"))  # fmt: skip
        assert vm["state"] == "running", vm
        return vm

    server = create("s", "sgserver", "srv", SERVER_IP)
    a = create("a", "sgprobe", "ga")
    b = create("b", "sgprobe", "gb")
    pids = {vm["id"]: json.loads(d.ok("vm", "show", vm["name"], "--json"))["pid"] for vm in (server, a, b)}

    # S's group admits nothing yet: both probers fail (their probes run, so the guests are up)
    for vm in (a, b):
        assert wait_for(settled(d, vm["id"], 0), 300, f"{vm['name']}'s first probes", interval=0.5) == "fail"

    # tcp/22 from the members of ga: A gets through, B (same network, not in ga) does not
    mark = {vm["id"]: len(console_of(d, vm["id"])) for vm in (a, b)}
    shown = json.loads(d.ok("secgroup", "rule", "add", "srv", "--direction", "ingress", "--protocol", "tcp",
                            "--port", "22", "--remote-group", "ga", "--json"))  # fmt: skip
    rule = next(r["id"] for r in shown["rules"] if r["direction"] == "ingress")
    assert wait_for(settled(d, a["id"], mark[a["id"]]), 120, "A's probes after the rule", interval=0.5) == "ok"
    assert wait_for(settled(d, b["id"], mark[b["id"]]), 120, "B's probes after the rule", interval=0.5) == "fail"

    # the rule goes: A is refused too
    mark = {vm["id"]: len(console_of(d, vm["id"])) for vm in (a, b)}
    d.ok("secgroup", "rule", "delete", "srv", rule)
    assert wait_for(settled(d, a["id"], mark[a["id"]]), 120, "A's probes after the delete", interval=0.5) == "fail"
    assert wait_for(settled(d, b["id"], mark[b["id"]]), 120, "B's probes after the delete", interval=0.5) == "fail"

    # nothing was restarted: same QEMU processes, each guest booted once, probe counters kept counting
    for vm in (server, a, b):
        assert json.loads(d.ok("vm", "show", vm["name"], "--json"))["pid"] == pids[vm["id"]], vm["name"]
        assert console_of(d, vm["id"]).count("BRAMBLE-GUEST-UP") == 1, vm["name"]
    for vm in (a, b):
        numbers = [n for n, _ in probes_after(d, vm["id"], 0)]
        assert numbers == list(range(1, len(numbers) + 1)), (vm["name"], numbers)

    for vm in (server, a, b):
        d.ok("vm", "delete", vm["name"], "--yes")
    for group in ("srv", "ga", "gb"):
        d.ok("secgroup", "delete", group)
    d.ok("net", "delete", "lan")
