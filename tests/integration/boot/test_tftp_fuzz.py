"""Hypothesis-generated malformed datagrams against a *running* TftpServer on 127.0.0.1.

Every datagram goes either to the listening port or, in the middle of a real transfer, to the
transfer's port (from the client and from a stranger). Each must be dropped without a reply,
counted in ``stats["malformed"]`` and logged, and the transfer it interrupted must still
finish byte-exact; afterwards the server serves a normal download.

The server runs on its own event loop in a background thread, so the blocking test code and
hypothesis drive it exactly like a remote client would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.qemu_helpers import wait_for

from bramble.boot.tftp import TftpEvent, TftpServer
from bramble.proto.tftp import Ack, Data, ReadRequest, TftpDecodeError, decode, encode

HOST = "127.0.0.1"
TINY = b"".join(bytes([i]) * 512 for i in range(8))  # 8 full blocks, then an empty final block
LOGGER = "bramble.boot.tftp"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def malformed(self) -> int:
        return sum("malformed" in m for m in self.messages)


class ThreadedServer:
    """A TftpServer on its own event loop thread; stopped (and the thread joined) on exit."""

    def __init__(self, root: Path) -> None:
        self.events: list[TftpEvent] = []
        self.loop = asyncio.new_event_loop()
        self.server = TftpServer(root, host=HOST, port=0, initial_timeout=0.5, retries=3, on_event=self.events.append)
        self._thread = threading.Thread(target=self.loop.run_forever, name="tftp-fuzz-loop", daemon=True)

    def call(self, coro: object) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout=10)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedServer, _Records]]:
    root = tmp_path_factory.mktemp("tftp-fuzz")
    (root / "tiny.bin").write_bytes(TINY)
    (root / "small.bin").write_bytes(os.urandom(300_000))
    records = _Records()
    logger = logging.getLogger(LOGGER)
    old_level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        with ThreadedServer(root) as threaded:
            yield threaded, records
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
        shutil.rmtree(root, ignore_errors=True)


def _is_malformed(data: bytes) -> bool:
    try:
        decode(data)
    except TftpDecodeError:
        return True
    return False


_u16 = st.integers(0, 0xFFFF).map(lambda v: struct.pack("!H", v))
_text = st.binary(max_size=40)
# Random bytes, plus near-misses of every packet type, so the decoder's deeper branches are hit.
malformed = st.one_of(
    st.binary(max_size=700),
    st.tuples(st.sampled_from([b"\x00\x01", b"\x00\x02"]), _text, _text).map(lambda t: t[0] + t[1] + b"\x00" + t[2]),
    st.tuples(st.sampled_from([b"\x00\x01", b"\x00\x02"]), st.lists(_text, max_size=6)).map(
        lambda t: t[0] + b"\x00".join(t[1]) + b"\x00"
    ),
    st.tuples(st.just(b"\x00\x04"), st.binary(max_size=6)).map(lambda t: t[0] + t[1]),
    st.tuples(st.just(b"\x00\x05"), _u16, _text).map(lambda t: t[0] + t[1] + t[2]),
    st.tuples(st.just(b"\x00\x06"), st.lists(_text, max_size=4)).map(lambda t: t[0] + b"\x00".join(t[1])),
    st.tuples(st.just(b"\x00\x03"), st.binary(max_size=1)).map(lambda t: t[0] + t[1]),
    st.tuples(_u16, st.binary(max_size=30)).map(lambda t: t[0] + t[1]),
).filter(_is_malformed)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(5)
    return sock


def _nothing_queued(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(70000)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def _download(port: int, name: str) -> bytes:
    """Lock-step download with the codec; returns the file."""
    with _udp() as sock:
        sock.sendto(encode(ReadRequest(name)), (HOST, port))
        chunks: list[bytes] = []
        while True:
            data, tid = sock.recvfrom(70000)
            packet = decode(data)
            assert isinstance(packet, Data), packet
            if packet.block == (len(chunks) + 1) & 0xFFFF:
                chunks.append(packet.data)
            sock.sendto(encode(Ack(packet.block)), tid)
            if len(packet.data) < 512:
                return b"".join(chunks)


def test_malformed_datagrams_to_the_listening_port(running: tuple[ThreadedServer, _Records]) -> None:
    threaded, records = running
    stats = threaded.server.stats
    port = threaded.server.port

    @FUZZ
    @given(datagram=malformed)
    def send_one(datagram: bytes) -> None:
        before, logged = stats["malformed"], records.malformed()
        with _udp() as sock:
            sock.sendto(datagram, (HOST, port))
            wait_for(
                lambda: stats["malformed"] == before + 1 and records.malformed() == logged + 1,
                5,
                "the malformed request to be counted and logged",
                interval=0.002,
            )
            assert _nothing_queued(sock), "a malformed request was answered"

    send_one()
    events = len(threaded.events)
    assert stats["transfers_started"] == 0  # nothing malformed started a transfer
    assert _download(port, "small.bin") == (threaded.server.root / "small.bin").read_bytes()
    wait_for(lambda: len(threaded.events) == events + 1, 5, "the transfer's event")
    assert threaded.events[-1].outcome == "sent"


def test_malformed_datagrams_to_a_transfer_port(running: tuple[ThreadedServer, _Records]) -> None:
    threaded, records = running
    stats = threaded.server.stats
    port = threaded.server.port

    @FUZZ
    @given(from_client=malformed, from_stranger=malformed)
    def interrupt_a_transfer(from_client: bytes, from_stranger: bytes) -> None:
        before, logged, events = stats["malformed"], records.malformed(), len(threaded.events)
        with _udp() as client, _udp() as stranger:
            client.sendto(encode(ReadRequest("tiny.bin")), (HOST, port))
            data, tid = client.recvfrom(70000)
            assert decode(data) == Data(1, TINY[:512])
            client.sendto(from_client, tid)
            stranger.sendto(from_stranger, tid)
            wait_for(
                lambda: stats["malformed"] == before + 2 and records.malformed() == logged + 2,
                5,
                "both malformed datagrams to be counted and logged",
                interval=0.002,
            )
            # Dropped, not answered: the client sees no duplicate, the stranger no ERROR 5.
            assert _nothing_queued(client) and _nothing_queued(stranger)
            chunks, block = [TINY[:512]], 1
            while True:
                client.sendto(encode(Ack(block)), tid)
                packet = decode(client.recvfrom(70000)[0])
                assert isinstance(packet, Data) and packet.block == block + 1, packet
                block += 1
                chunks.append(packet.data)
                if len(packet.data) < 512:
                    client.sendto(encode(Ack(block)), tid)
                    break
        assert b"".join(chunks) == TINY
        wait_for(lambda: len(threaded.events) == events + 1, 5, "the transfer's event", interval=0.002)
        assert (threaded.events[-1].outcome, threaded.events[-1].bytes_sent) == ("sent", len(TINY))

    interrupt_a_transfer()
    assert _download(port, "small.bin") == (threaded.server.root / "small.bin").read_bytes()
