"""network.conntrack against the kernel: the dump reads what pyroute2 reads, and the cut deletes exactly
the entries the rules refuse (UDP, ICMP, TCP), thousands at once, in a throwaway namespace."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from tests.qemu_helpers import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
PROBE = Path(__file__).with_name("conntrack_probe.py")


def test_cut_deletes_exactly_the_refused_entries() -> None:
    ns = f"bramble-ct-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        setup = [
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "netns", "exec", ns, "nft", "add table ip probe"],  # conntrack only tracks once a hook needs it
            ["ip", "netns", "exec", ns, "nft", "add chain ip probe out { type filter hook output priority 0; }"],
            ["ip", "netns", "exec", ns, "nft", "add rule ip probe out ct state new counter"],
        ]
        for argv in setup:
            subprocess.run(argv, check=True, capture_output=True)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(PROBE), "3000"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert result["ours"] == result["theirs"]  # the hand-written dump parses what pyroute2 does
    to_vm = [row for row in result["ours"] if row[0] == "127.0.0.2"]
    assert len(to_vm) == 1500 + 1 + 2  # udp, the echo request, two tcp connections
    assert result["cut"] == 1500 + 1 + 1  # all but tcp/7000
    assert result["again"] == 0
    left_to_vm = [row for row in result["left"] if row[0] == "127.0.0.2"]
    assert left_to_vm == [["127.0.0.2", 6, 7000]]
    assert ["127.0.0.3", 17, 9000] in result["left"]  # not a VM: not ours to judge
