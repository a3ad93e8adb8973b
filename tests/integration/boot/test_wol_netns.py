"""Wake-on-LAN on the wire: send from one end of a veth pair in throwaway namespaces, capture
the frame on the other end with a raw AF_PACKET socket, and check the UDP payload byte by byte.

Needs root (namespaces, SO_BINDTODEVICE, AF_PACKET). Nothing touches the host's namespace.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tests.integration.boot.netns import NetnsPair, ip, netns_pair

from bramble.boot.wol import magic_packet, send_wake

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and raw sockets")

SERVER_CIDR = "10.77.0.1/24"
CLIENT_MAC = "02:00:00:77:00:02"

# Runs inside the capturing namespace: print one JSON line per IPv4/UDP frame seen on argv[1].
_CAPTURE = r"""
import json, select, socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sock.bind((sys.argv[1], 0))
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    if not select.select([sock], [], [], 0.2)[0]:
        continue
    frame = sock.recv(65535)
    if frame[12:14] != b"\x08\x00" or frame[14 + 9] != 17:
        continue
    ip = frame[14:]
    udp = ip[(ip[0] & 15) * 4 :]
    length = int.from_bytes(udp[4:6], "big")
    print(json.dumps({
        "eth_dst": frame[0:6].hex(), "ip_dst": socket.inet_ntoa(ip[16:20]),
        "dport": int.from_bytes(udp[2:4], "big"), "payload": udp[8:length].hex(),
    }), flush=True)
"""

_SEND = (
    "import asyncio, sys; from bramble.boot.wol import send_wake; "
    "asyncio.run(send_wake(sys.argv[1], sys.argv[2] or None, port=int(sys.argv[3]), broadcast=sys.argv[4]))"
)


class Capture:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next_frame(self, deadline: float = 10) -> dict[str, Any]:
        line = self.lines.get(timeout=deadline)
        return dict(json.loads(line))

    def frame_with_port(self, port: int, deadline: float = 10) -> dict[str, Any]:
        end = time.monotonic() + deadline
        while True:
            frame = self.next_frame(max(0.01, end - time.monotonic()))
            if frame["dport"] == port:
                return frame


@contextmanager
def capture(ns: str, iface: str) -> Iterator[Capture]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _CAPTURE, iface, "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        cap = Capture(proc)
        assert cap.lines.get(timeout=20) == "ready"
        yield cap
    finally:
        proc.kill()
        proc.wait(timeout=10)


def send_from(ns: str, mac: str, iface: str | None, port: int, broadcast: str = "255.255.255.255") -> None:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _SEND, mac, iface or "", str(port), broadcast]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    with netns_pair(SERVER_CIDR, CLIENT_MAC) as made:
        yield made


def test_magic_packet_arrives_on_the_bound_interface(pair: NetnsPair) -> None:
    target = "52:54:00:ab:cd:ef"
    with capture(pair.client_ns, pair.client_if) as cap:
        send_from(pair.server_ns, target, pair.server_if, 9)
        frame = cap.frame_with_port(9)
    assert bytes.fromhex(frame["payload"]) == b"\xff" * 6 + bytes.fromhex("525400abcdef") * 16
    assert bytes.fromhex(frame["payload"]) == magic_packet(target)
    assert (frame["eth_dst"], frame["ip_dst"]) == ("ffffffffffff", "255.255.255.255")


def test_custom_port_and_directed_broadcast_without_binding(pair: NetnsPair) -> None:
    with capture(pair.client_ns, pair.client_if) as cap:
        send_from(pair.server_ns, "52-54-00-00-00-07", None, 7, broadcast="10.77.0.255")
        frame = cap.frame_with_port(7)
    assert bytes.fromhex(frame["payload"]) == magic_packet("52:54:00:00:00:07")
    assert (frame["eth_dst"], frame["ip_dst"]) == ("ffffffffffff", "10.77.0.255")


def test_packet_for_another_interface_does_not_leave_on_this_one(pair: NetnsPair) -> None:
    # A second link in the sender's namespace (a veth pair with both ends there): a wake bound to it
    # must not reach the client's veth. The namespace's deletion removes it.
    ip("-n", pair.server_ns, "link", "add", "wdum0", "type", "veth", "peer", "name", "wdum1")
    for name in ("wdum0", "wdum1"):
        ip("-n", pair.server_ns, "link", "set", name, "up")
    with capture(pair.client_ns, pair.client_if) as cap:
        send_from(pair.server_ns, "52:54:00:00:00:aa", "wdum0", 9)
        send_from(pair.server_ns, "52:54:00:00:00:bb", pair.server_if, 9)
        frame = cap.frame_with_port(9)  # frames arrive in order: the first one seen must be the second wake
    assert bytes.fromhex(frame["payload"]) == magic_packet("52:54:00:00:00:bb")


@pytest.mark.anyio
async def test_unknown_interface_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="cannot send on interface nosuchif0"):
        await send_wake("52:54:00:00:00:01", "nosuchif0")


@pytest.mark.anyio
async def test_bad_mac_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad MAC address"):
        await send_wake("52:54:00:00:01", None)
