"""RouterAdvertiser on a veth between two throwaway namespaces, checked by rdisc6 and by the client's kernel.

rdisc6 (Debian ndisc6) solicits and prints the RA it got; the client kernel's SLAAC address from our
prefix proves the RA is accepted as valid (hop limit 255, link-local source, checksum), and the absent
default route proves router lifetime 0 is honoured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.boot.netns import NetnsPair, ip, netns_pair
from tests.integration.boot.test_proxy_dhcp import Runner, stop

PREFIX = "fd99:7:1:2::/64"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and raw sockets need root"),
    pytest.mark.skipif(shutil.which("rdisc6") is None, reason="needs rdisc6 (Debian package ndisc6)"),
]


@pytest.fixture
def advertised(tmp_path: Path) -> Iterator[tuple[NetnsPair, Runner]]:
    with netns_pair("10.231.9.1/24", "02:42:b7:00:09:02") as pair:
        runner = Runner(pair.server_ns, tmp_path, "--interface", pair.server_if, "--server-ip", "10.231.9.1",
                        "--subnet", "10.231.9.0/24", "--range-start", "10.231.9.10", "--range-end", "10.231.9.20",
                        "--ra", "--ra-prefix", PREFIX, "--ra-interval", "600")  # fmt: skip
        try:
            yield pair, runner
        finally:
            stop(runner.proc)


def test_rdisc6_gets_our_ra_and_the_client_autoconfigures(advertised: tuple[NetnsPair, Runner]) -> None:
    pair, runner = advertised
    # Unsolicited RAs go out once our link-local address has passed DAD: three, half a second apart.
    # The client's kernel may solicit first (its link came up too), and then the first RA answers it.
    first = runner.wait_for(lambda e: "ra" in e and e["ra"]["solicited_by"] is None, timeout=15)["ra"]
    assert first["prefix"] == PREFIX
    # rdisc6 needs the client's own link-local address to have passed DAD too.
    deadline = time.monotonic() + 15
    link_local = ""
    while time.monotonic() < deadline and ("fe80::" not in link_local or "tentative" in link_local):
        link_local = ip("-n", pair.client_ns, "-6", "addr", "show", "dev", pair.client_if, "scope", "link")
        time.sleep(0.05)
    done = subprocess.run(
        ["ip", "netns", "exec", pair.client_ns, "rdisc6", "-1", "-r", "5", "-w", "1000", pair.client_if],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert "Hop limit : 64" in text and "Stateful address conf. : No" in text and "Stateful other conf. : No" in text
    assert "Router lifetime : 0 (0x00000000) seconds" in text
    assert f"Prefix : {PREFIX}" in text and "On-link : Yes" in text and "Autonomous address conf.: Yes" in text
    assert "Source link-layer address:" in text and "from fe80::" in text
    runner.wait_for(lambda e: "ra" in e and e["ra"]["solicited_by"] is not None)

    # The client kernel accepted it: a SLAAC address in our prefix, and no default route via us.
    deadline = time.monotonic() + 15
    addrs = ""
    while time.monotonic() < deadline and "fd99:7:1:2:" not in addrs:
        addrs = ip("-n", pair.client_ns, "-6", "addr", "show", "dev", pair.client_if)
        time.sleep(0.1)
    assert "fd99:7:1:2:" in addrs, addrs
    assert ip("-n", pair.client_ns, "-6", "route", "show", "default").strip() == ""
