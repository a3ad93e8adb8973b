"""Overload control of DhcpServer on a real loopback socket: REQUESTs before queued DISCOVERs, stale ones shed."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from bramble.boot import dhcp
from bramble.boot.dhcp import DhcpConfig, DhcpEvent, DhcpServer
from bramble.boot.leases import LeaseStore
from bramble.proto.dhcp import DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DhcpPacket, decode, encode

RELAY = IPv4Address("127.0.0.1")
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _packet(i: int, mtype: int, **options: bytes) -> bytes:
    opts = {53: bytes((mtype,)), **{int(k[1:]): v for k, v in options.items()}}
    return encode(DhcpPacket(xid=i, giaddr=RELAY, chaddr=bytes((2, 0, 0, 0, 0, i)), options=opts))


@pytest.fixture
def relay() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


async def _server(relay: socket.socket, events: list[DhcpEvent]) -> DhcpServer:
    config = DhcpConfig(
        server_ip=IPv4Address("127.0.0.1"),
        subnet=IPv4Network("127.0.0.0/8"),
        range_start=IPv4Address("127.1.0.1"),
        range_end=IPv4Address("127.1.0.250"),
    )
    server = DhcpServer(
        config,
        LeaseStore(None, config.pool()),
        interface=None,
        host="127.0.0.1",
        port=0,
        relay_port=relay.getsockname()[1],
        on_event=events.append,
    )
    await server.start()
    return server


async def _wait_for(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_request_is_answered_before_queued_discovers(relay: socket.socket) -> None:
    events: list[DhcpEvent] = []
    server = await _server(relay, events)
    try:
        target = ("127.0.0.1", server.port)
        relay.sendto(_packet(1, DHCPDISCOVER), target)
        await _wait_for(lambda: server.stats["offers"] == 1, "the first offer")
        offer = decode(await asyncio.to_thread(relay.recv, 2048))
        assert offer.message_type == DHCPOFFER
        events.clear()
        # A burst the loop sees in one wake-up: 40 new DISCOVERs, then the REQUEST for the offer.
        for i in range(2, 42):
            relay.sendto(_packet(i, DHCPDISCOVER), target)
        relay.sendto(_packet(1, DHCPREQUEST, o54=offer.server_id.packed, o50=offer.yiaddr.packed), target)  # type: ignore[union-attr]
        await _wait_for(lambda: server.stats["acks"] == 1 and server.stats["offers"] == 41, "the burst")
        assert [e.outcome for e in events] == ["acked"] + ["offered"] * 40
        assert server.stats["shed"] == 0
    finally:
        await server.close()


async def test_stale_discovers_are_shed_and_counted(relay: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dhcp, "_STALE_DISCOVER", -1.0)  # every queued DISCOVER counts as too old
    events: list[DhcpEvent] = []
    server = await _server(relay, events)
    try:
        for i in range(1, 6):
            relay.sendto(_packet(i, DHCPDISCOVER), ("127.0.0.1", server.port))
        await _wait_for(lambda: server.stats["shed"] == 5, "five shed DISCOVERs")
        assert server.stats["offers"] == 0
        assert events == []
    finally:
        await server.close()


async def test_receive_buffer_holds_a_scheduling_hiccup(relay: socket.socket) -> None:
    """1 MiB asked for (root may exceed rmem_max; the kernel reports double what was set)."""
    server = await _server(relay, [])
    try:
        size = server._sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        assert size >= 2 * (dhcp._RECEIVE_BUFFER if os.geteuid() == 0 else min(rmem_max, dhcp._RECEIVE_BUFFER))
    finally:
        await server.close()


async def test_each_packet_event_has_every_dhcpevent_field(relay: socket.socket) -> None:
    """Events are built straight from a tuple on the packet path: they must still be complete
    DhcpEvents, equal to one built with the constructor."""
    events: list[DhcpEvent] = []
    server = await _server(relay, events)
    try:
        relay.sendto(
            _packet(7, DHCPDISCOVER, o12=b"kiosk", o60=b"PXEClient:Arch:00000:UNDI:002001", o93=b"\0\0"),
            ("127.0.0.1", server.port),
        )
        await _wait_for(lambda: bool(events), "the DISCOVER event")
    finally:
        await server.close()
    event = events[0]
    assert type(event) is DhcpEvent and len(event) == len(DhcpEvent._fields)
    assert event == DhcpEvent(**event._asdict())
    assert (event.message_type, event.outcome, event.hostname, event.arch) == ("DISCOVER", "offered", "kiosk", "bios")
    assert event.mac == "02:00:00:00:00:07" and event.yiaddr is not None and event.giaddr == "127.0.0.1"
