"""Fuzzing the running DhcpServer on loopback: malformed datagrams are dropped, counted and logged, and a
normal DORA works afterwards.

Every datagram's giaddr is forced to 127.0.0.1 (when the datagram is long enough to have one), so any
reply the server sends goes to our relay socket on loopback and never to a broadcast or random address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bramble.boot.dhcp import DhcpConfig, DhcpEvent, DhcpServer
from bramble.boot.leases import LeaseStore
from bramble.boot.pxe import PxePolicy
from bramble.proto.dhcp import DHCPACK, DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DhcpPacket, decode, encode, option_ip

LOOP = IPv4Address("127.0.0.1")
VALID = encode(
    DhcpPacket(
        xid=99,
        chaddr=bytes.fromhex("020000000099"),
        giaddr=LOOP,
        options={53: bytes((DHCPDISCOVER,)), 55: bytes([1, 3, 6, 66, 67]), 60: b"PXEClient:Arch:00007", 93: b"\0\7"},
    )
)


def confined(data: bytes) -> bytes:
    """Force giaddr to 127.0.0.1: replies can then only go to the loopback relay."""
    if len(data) < 28:
        return data
    return data[:24] + LOOP.packed + data[28:]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid PXE DISCOVER with flipped bytes, a cut, or junk options appended: deep decoder paths."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        end = data.find(255, 240)
        cut = end if end >= 0 else len(data)
        junk = draw(st.binary(max_size=80))
        data = data[:cut] + junk + data[cut:]
    return bytes(data)


datagrams = st.one_of(st.binary(max_size=700), mutated())


@contextmanager
def running_server(tmp_path: Path, relay_port: int) -> Iterator[tuple[DhcpServer, list[DhcpEvent]]]:
    config = DhcpConfig(
        server_ip=LOOP,
        subnet=IPv4Network("127.0.0.0/24"),
        range_start=IPv4Address("127.0.0.10"),
        range_end=IPv4Address("127.0.0.200"),
        boot_file_for=PxePolicy(tftp_server=LOOP, http_base="http://127.0.0.1:8471").choose,
    )
    events: list[DhcpEvent] = []
    store = LeaseStore(tmp_path / "leases.json", config.pool())
    server = DhcpServer(
        config, store, interface=None, host="127.0.0.1", port=0, relay_port=relay_port, on_event=events.append
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        yield server, events
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_fuzzed_datagrams_are_dropped_counted_logged_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bramble.boot.dhcp")
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    relay.settimeout(5)
    sent = 0
    with running_server(tmp_path, relay.getsockname()[1]) as (server, events):
        target = ("127.0.0.1", server.port)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(datagrams)
        def send(data: bytes) -> None:
            nonlocal sent
            sender.sendto(confined(data), target)
            sent += 1

        send()
        sender.close()
        deadline = time.monotonic() + 20

        # The server counts a datagram as received before it finishes with it (in the loop's thread):
        # wait until each is also malformed or has its event. A DISCOVER-shaped datagram that waited
        # over 0.5 s in the server's queue is shed instead (counted), as under any overload: this
        # thread's hypothesis shares the GIL with the server's and can starve it on a busy machine.
        def handled() -> int:
            return server.stats["received"] + server.stats["shed"]

        while (
            handled() < sent or len(events) + server.stats["malformed"] < server.stats["received"]
        ) and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = dict(server.stats)
        assert stats["received"] + stats["shed"] == sent, stats
        assert stats["shed"] < sent // 10, stats  # shedding is the exception, not how this test passes
        assert stats["malformed"] > 0  # the decoder refused some, and said so
        assert stats["errors"] == 0, stats  # no datagram reached an unexpected exception
        assert any("malformed datagram" in r.getMessage() for r in caplog.records)
        # Everything not malformed was decided (answered or deliberately ignored), each with an event.
        assert len(events) == stats["received"] - stats["malformed"]

        # Drain what the fuzzing produced, then a normal DORA still works.
        relay.settimeout(0.2)
        try:
            while True:
                relay.recvfrom(2048)
        except TimeoutError:
            pass
        relay.settimeout(5)
        mac = bytes.fromhex("02000000fe01")

        def exchange(options: dict[int, bytes]) -> DhcpPacket:
            relay.sendto(encode(DhcpPacket(xid=0xFEED, chaddr=mac, giaddr=LOOP, options=options)), target)
            while True:
                reply = decode(relay.recvfrom(2048)[0])
                if reply.xid == 0xFEED:
                    return reply

        offer = exchange({53: bytes((DHCPDISCOVER,))})
        assert offer.message_type == DHCPOFFER and offer.yiaddr in IPv4Network("127.0.0.0/24")
        ack = exchange({53: bytes((DHCPREQUEST,)), 50: offer.yiaddr.packed, 54: option_ip(LOOP)})
        assert ack.message_type == DHCPACK and ack.yiaddr == offer.yiaddr
    relay.close()
