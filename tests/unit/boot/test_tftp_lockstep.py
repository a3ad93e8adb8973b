"""The C lock-step loop (bramble.boot._lockstep) on its own, over real loopback UDP sockets.

The loop is the server's side of a connected socket pair: these tests play the client with
ACKs and check which DATA packets come back and what the loop hands back to Python.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import bramble.boot.tftp as tftp_module

PACKET = 8  # 4-byte header + 4 bytes of payload: small enough to write slabs by hand
CREDIT = tftp_module._SPIN_CREDIT  # a fresh transfer's polling credit


def _run() -> tftp_module._LockstepRun:
    run = tftp_module._lockstep_run
    assert run is not None, "bramble.boot._lockstep is not built: install gcc and python3-dev, then pip install -e ."
    return run


def _slab(count: int, first_block: int = 1) -> memoryview:
    """`count` DATA packets of PACKET bytes; the payload spells the block number."""
    out = bytearray()
    for i in range(count):
        block = (first_block + i) & 0xFFFF
        out += struct.pack("!HH", 3, block) + struct.pack("!I", first_block + i)
    return memoryview(out)


def _ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server, client): UDP on 127.0.0.1, the server connected to the client as a transfer is."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        server.connect(client.getsockname())
        client.connect(server.getsockname())
        client.settimeout(5)
        tftp_module._set_receive_timeout(server, 5)
        yield server, client
    finally:
        server.close()
        client.close()


def _in_thread(run: tftp_module._LockstepRun, *args: object) -> tuple[threading.Thread, list[tuple[int, ...]]]:
    result: list[tuple[int, ...]] = []
    thread = threading.Thread(target=lambda: result.append(run(*args)))  # type: ignore[arg-type]
    thread.start()
    return thread, result


def test_each_expected_ack_sends_the_next_packet_until_the_slab_ends(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    slab, buffer = _slab(4), bytearray(64)
    # Block 1 is out already; its ACK sends packet index 1 (block 2), and so on to index 3,
    # which is the file's final block: 6 bytes long (2 bytes of payload).
    thread, result = _in_thread(_run(), server.fileno(), buffer, slab, 1, 4, PACKET, 6, 1, 0, CREDIT)
    got = []
    for block in (1, 2, 3):
        client.send(_ack(block))
        got.append(client.recv(100))
    thread.join(5)
    assert got == [bytes(slab[8:16]), bytes(slab[16:24]), bytes(slab[24:30])]
    assert result == [(3, 3, -1, 0, CREDIT)]  # three sent, three received, slab done


def test_anything_but_the_expected_ack_is_handed_back(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    slab, buffer = _slab(8), bytearray(64)
    thread, result = _in_thread(_run(), server.fileno(), buffer, slab, 1, 8, PACKET, PACKET, 1, 0, CREDIT)
    client.send(_ack(1))
    assert client.recv(100) == bytes(slab[8:16])
    client.send(_ack(1))  # a duplicate: the loop must not answer it (Sorcerer's Apprentice)
    thread.join(5)
    assert result == [(1, 2, 4, 0, CREDIT)]
    assert bytes(buffer[:4]) == _ack(1)


def test_an_error_packet_is_handed_back_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    buffer = bytearray(64)
    error = struct.pack("!HH", 5, 0) + b"enough\0"
    thread, result = _in_thread(_run(), server.fileno(), buffer, _slab(4), 1, 4, PACKET, PACKET, 1, 0, CREDIT)
    client.send(error)
    thread.join(5)
    assert result == [(0, 1, len(error), 0, CREDIT)]
    assert bytes(buffer[: len(error)]) == error


def test_with_nothing_left_to_send_the_final_ack_goes_back_to_python(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    buffer = bytearray(64)
    thread, result = _in_thread(_run(), server.fileno(), buffer, _slab(4), 4, 4, PACKET, 6, 4, 0, CREDIT)
    client.send(_ack(4))
    thread.join(5)
    assert result == [(0, 1, 4, 0, CREDIT)]


def test_block_numbers_wrap_after_65535(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    slab, buffer = _slab(3, first_block=65535), bytearray(64)
    thread, result = _in_thread(_run(), server.fileno(), buffer, slab, 1, 3, PACKET, PACKET, 65535, 0, CREDIT)
    client.send(_ack(65535))
    assert client.recv(100)[:4] == b"\x00\x03\x00\x00"  # block 65536 travels as 0
    client.send(_ack(0))
    assert client.recv(100)[:4] == b"\x00\x03\x00\x01"
    thread.join(5)
    assert result == [(2, 2, -1, 0, CREDIT)]


def test_receive_timeout_is_reported_as_eagain(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    tftp_module._set_receive_timeout(server, 0.05)
    assert _run()(server.fileno(), bytearray(64), _slab(4), 1, 4, PACKET, PACKET, 1, 0, CREDIT) == (
        0,
        0,
        -2,
        errno.EAGAIN,
        CREDIT,
    )


def test_shutdown_wakes_the_loop_with_an_empty_datagram(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    thread, result = _in_thread(_run(), server.fileno(), bytearray(64), _slab(4), 1, 4, PACKET, PACKET, 1, 0, CREDIT)
    # shutdown() is how TftpServer.close() aborts a transfer; the Python side then sees _aborting.
    # Whether it lands before or during the wait, the receive returns an empty datagram.
    server.shutdown(socket.SHUT_RDWR)
    thread.join(5)
    assert result == [(0, 1, 0, 0, CREDIT)]


def test_an_icmp_refusal_for_an_earlier_send_is_skipped(pair: tuple[socket.socket, socket.socket]) -> None:
    """ECONNREFUSED from a previous send does not end the loop; the ACK behind it is served."""
    server, client = pair
    port = client.getsockname()[1]
    client.close()
    server.send(b"\x00\x03\x00\x01data")  # to a closed port: the kernel queues ECONNREFUSED
    replacement = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        replacement.bind(("127.0.0.1", port))
        replacement.connect(server.getsockname())
        replacement.settimeout(5)
        slab, buffer = _slab(2), bytearray(64)
        thread, result = _in_thread(_run(), server.fileno(), buffer, slab, 1, 2, PACKET, PACKET, 1, 0, CREDIT)
        replacement.send(_ack(1))
        assert replacement.recv(100) == bytes(slab[8:16])
        thread.join(5)
        assert result == [(1, 1, -1, 0, CREDIT)]
    finally:
        replacement.close()


@pytest.mark.parametrize(
    ("start", "end", "packet_size", "end_length", "expected", "spin_ns"),
    [
        (0, 5, PACKET, PACKET, 1, 0),  # five packets in a slab of four
        (2, 1, PACKET, PACKET, 1, 0),  # end before start
        (0, 4, PACKET, PACKET + 1, 1, 0),  # final packet longer than a packet
        (0, 4, PACKET, 3, 1, 0),  # final packet shorter than a header
        (0, 4, PACKET, PACKET, 65536, 0),  # not a 16-bit block number
        (-1, 4, PACKET, PACKET, 1, 0),
        (0, 4, PACKET, PACKET, 1, -1),  # a negative poll budget
        (0, 4, PACKET, PACKET, 1, 1_000_001),  # polling for more than a millisecond
    ],
)
def test_arguments_out_of_range_are_refused(
    pair: tuple[socket.socket, socket.socket],
    start: int,
    end: int,
    packet_size: int,
    end_length: int,
    expected: int,
    spin_ns: int,
) -> None:
    server, _ = pair
    with pytest.raises(ValueError, match="out of range"):
        _run()(server.fileno(), bytearray(64), _slab(4), start, end, packet_size, end_length, expected, spin_ns, CREDIT)


def _answer(client: socket.socket, blocks: range, delay: float) -> None:
    for block in blocks:
        client.recv(100)
        if delay:
            threading.Event().wait(delay)
        client.send(_ack(block + 1))


def test_polling_stops_when_the_client_is_slower_than_the_budget(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    slab = _slab(20)
    thread, result = _in_thread(_run(), server.fileno(), bytearray(64), slab, 1, 20, PACKET, PACKET, 1, 20_000, CREDIT)
    client.send(_ack(1))
    _answer(client, range(1, 19), delay=0.002)  # every ACK 2 ms after its DATA: far beyond 20 us
    client.recv(100)
    thread.join(5)
    sent, received, status, error, credit = result[0]
    assert (sent, received, status, error) == (19, 19, -1, 0)
    assert credit <= 0  # polling given up after 8 misses; the caller stops asking


def test_polling_goes_on_while_the_client_answers_within_the_budget(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    slab = _slab(20)
    # The largest budget (1 ms): a client thread that answers at once is well within it, so
    # eight misses in a row would take a very busy host.
    thread, result = _in_thread(
        _run(), server.fileno(), bytearray(64), slab, 1, 20, PACKET, PACKET, 1, 1_000_000, CREDIT
    )
    client.send(_ack(1))
    _answer(client, range(1, 19), delay=0)
    client.recv(100)
    thread.join(5)
    sent, received, status, error, credit = result[0]
    assert (sent, received, status, error) == (19, 19, -1, 0)
    assert credit > 0  # still polling (a rare late ACK costs credit, caught ones earn it back)


def test_a_spent_credit_means_no_polling(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    tftp_module._set_receive_timeout(server, 0.05)
    # A 1 ms budget with no credit: the wait is the plain timed receive, and the credit stays.
    assert _run()(server.fileno(), bytearray(64), _slab(4), 1, 4, PACKET, PACKET, 1, 1_000_000, 0) == (
        0,
        0,
        -2,
        errno.EAGAIN,
        0,
    )


def test_no_polling_unless_a_cpu_is_left_for_each_client(tmp_path: Path) -> None:
    server = tftp_module.TftpServer(tmp_path, spin_us=20)
    server._cpus = 2
    assert server.spin_ns() == 20_000
    server._transfers = dict.fromkeys([cast(Any, object())])
    assert server.spin_ns() == 20_000  # one transfer, one CPU left for its client
    server._transfers = dict.fromkeys([cast(Any, object()), cast(Any, object())])
    assert server.spin_ns() == 0
    server._cpus = 1
    server._transfers = {}
    assert server.spin_ns() == 0  # a single CPU: polling would only hold up the client
    assert tftp_module.TftpServer(tmp_path, spin_us=0).spin_ns() == 0


@pytest.mark.parametrize("spin_us", [-1, 1001])
def test_spin_budget_out_of_range_is_refused(tmp_path: Path, spin_us: float) -> None:
    with pytest.raises(ValueError, match="spin_us"):
        tftp_module.TftpServer(tmp_path, spin_us=spin_us)


def test_a_credit_above_the_start_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    with pytest.raises(ValueError, match="out of range"):
        _run()(server.fileno(), bytearray(64), _slab(4), 1, 4, PACKET, PACKET, 1, 0, CREDIT + 1)
