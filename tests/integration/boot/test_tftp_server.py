"""The boot TFTP server against real clients (tftp-hpa, atftp, curl) and a codec-based client.

Everything runs on 127.0.0.1 against a server started on port 0 by each test.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import bramble.boot.tftp as tftp_module
from bramble.boot.tftp import TftpEvent, TftpServer
from bramble.proto.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)

pytestmark = [pytest.mark.anyio]

BIG = 32 * 1024 * 1024  # at blksize 512 this is 65536 + 1 blocks: the block number wraps
SMALL = 1024 * 1024
HOST = "127.0.0.1"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def boot_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("tftp")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "small.bin").write_bytes(os.urandom(SMALL))
    (root / "sub" / "tiny.txt").write_bytes(b"x" * 4096)
    (root / "text.cfg").write_bytes(b"line\nbare\rcr\r\n" * 100)
    (base / "secret").write_bytes(b"outside the root")
    (root / "escape").symlink_to(base / "secret")
    (root / "inside-link").symlink_to(root / "sub" / "tiny.txt")
    try:
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Running:
    def __init__(self, server: TftpServer, events: list[TftpEvent], out: Path) -> None:
        self.server, self.events, self.out = server, events, out

    async def event(self, count: int = 1, timeout: float = 10) -> TftpEvent:
        """Wait (bounded) for the server to report `count` events; return the latest."""
        with anyio.fail_after(timeout):
            while len(self.events) < count:
                await anyio.sleep(0.01)
        return self.events[-1]


async def _serve(root: Path, out: Path, **kwargs: object) -> AsyncIterator[Running]:
    async for running in _serve_on(HOST, root, out, **kwargs):
        yield running


async def _serve_on(host: str, root: Path, out: Path, **kwargs: object) -> AsyncIterator[Running]:
    events: list[TftpEvent] = []
    server = TftpServer(root, host=host, port=0, on_event=events.append, **kwargs)  # type: ignore[arg-type]
    await server.start()
    out.mkdir()
    try:
        yield Running(server, events, out)
    finally:
        await server.close()
        shutil.rmtree(out, ignore_errors=True)
        # Every transfer thread has ended once close() returns (they are not left running).
        with anyio.fail_after(5):
            while [t for t in threading.enumerate() if t.name.startswith("tftp ")]:
                await anyio.sleep(0.01)


@pytest.fixture
async def srv(boot_root: Path, tmp_path: Path) -> AsyncIterator[Running]:
    async for running in _serve(boot_root, tmp_path / "out", initial_timeout=0.5, retries=3):
        yield running


@pytest.fixture
async def patient_srv(boot_root: Path, tmp_path: Path) -> AsyncIterator[Running]:
    """A long retransmission timeout, for tests that check that nothing else is sent."""
    async for running in _serve(boot_root, tmp_path / "out", initial_timeout=5, retries=1):
        yield running


@pytest.fixture
async def fast_srv(boot_root: Path, tmp_path: Path) -> AsyncIterator[Running]:
    """Short timeouts for tests that exercise retransmission and give-up paths."""
    async for running in _serve(boot_root, tmp_path / "out", initial_timeout=0.1, retries=2):
        yield running


@pytest.fixture(params=["c", "python"], ids=["c-loop", "python-loop"])
def lockstep_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a lock-step test with the C loop (the default) and with the pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(tftp_module, "_lockstep_run", None)
        yield "python"
        return
    run = tftp_module._lockstep_run
    assert run is not None, "bramble.boot._lockstep is not built: install gcc and python3-dev, then pip install -e ."
    calls = 0

    def counted(*args: object) -> tuple[int, int, int, int]:
        nonlocal calls
        calls += 1
        return run(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tftp_module, "_lockstep_run", counted)
    yield "c"
    assert calls, "the transfer never entered the C loop"


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package: {'tftp-hpa' if binary == 'tftp' else binary})")
    return path


async def _run_client(cmd: list[str], timeout: float = 40) -> float:
    started = time.monotonic()
    with anyio.fail_after(timeout):
        result = await anyio.run_process(cmd, check=False)
    assert result.returncode == 0, (cmd, result.stdout, result.stderr)
    return time.monotonic() - started


# -- a minimal codec-based client (blocking; run in a worker thread) --------------------------


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, packet: Packet | bytes, addr: tuple[str, int] | None = None) -> None:
        data = packet if isinstance(packet, bytes) else encode(packet)
        self.sock.sendto(data, addr or (HOST, self.port))

    def recv(self) -> tuple[Packet, tuple[str, int]]:
        data, addr = self.sock.recvfrom(70000)
        return decode(data), addr

    def get(self, name: str, options: dict[str, str] | None = None, mode: str = "octet") -> bytes | Error:
        """Lock-step download; returns the file (as sent on the wire) or the server's ERROR."""
        self.send(ReadRequest(name, mode, options or {}))
        blksize, expected, chunks = 512, 1, []
        while True:
            packet, addr = self.recv()
            if isinstance(packet, Error):
                return packet
            if isinstance(packet, OptionAck):
                blksize = int(packet.options.get("blksize", "512"))
                self.send(Ack(0), addr)
                continue
            assert isinstance(packet, Data)
            if packet.block == expected & 0xFFFF:
                chunks.append(packet.data)
                expected += 1
            self.send(Ack(packet.block), addr)
            if packet.block == (expected - 1) & 0xFFFF and len(packet.data) < blksize:
                return b"".join(chunks)


def _error_for(port: int, packet: Packet) -> Error:
    with Client(port) as client:
        client.send(packet)
        reply, _ = client.recv()
    assert isinstance(reply, Error), reply
    return reply


# -- real clients ---------------------------------------------------------------------------


@pytest.mark.usefixtures("lockstep_loop")
async def test_tftp_hpa_default_blksize_wraps_block_numbers(srv: Running, boot_root: Path) -> None:
    tftp = _need("tftp")
    out = srv.out / "big.bin"
    seconds = await _run_client(
        [tftp, HOST, str(srv.server.port), "-v", "-m", "binary", "-c", "get", "big.bin", str(out)]
    )
    assert _sha(out) == _sha(boot_root / "big.bin")
    event = await srv.event()
    assert (event.outcome, event.bytes_sent, event.blksize) == ("sent", BIG, 512)
    print(f"tftp-hpa 32 MiB blksize 512: {seconds:.2f}s ({BIG / seconds / 1e6:.1f} MB/s)")


async def test_atftp_with_blksize_and_windowsize(srv: Running, boot_root: Path) -> None:
    atftp = _need("atftp")
    out = srv.out / "big.bin"
    port = str(srv.server.port)
    cmd = [atftp, "--get", "-r", "big.bin", "-l", str(out), "--option", "blksize 1468", "--option", "windowsize 16"]
    seconds = await _run_client([*cmd, HOST, port])
    assert _sha(out) == _sha(boot_root / "big.bin")
    event = await srv.event()
    assert (event.outcome, event.bytes_sent, event.blksize, event.windowsize) == ("sent", BIG, 1468, 16)
    print(f"atftp 32 MiB blksize 1468 windowsize 16: {seconds:.2f}s ({BIG / seconds / 1e6:.1f} MB/s)")


@pytest.mark.usefixtures("lockstep_loop")
async def test_curl_with_blksize(srv: Running, boot_root: Path) -> None:
    curl = _need("curl")
    out = srv.out / "big.bin"
    url = f"tftp://{HOST}:{srv.server.port}/big.bin"
    seconds = await _run_client([curl, "-s", "-S", url, "--tftp-blksize", "1468", "-o", str(out)])
    assert _sha(out) == _sha(boot_root / "big.bin")
    event = await srv.event()
    assert (event.outcome, event.bytes_sent, event.blksize) == ("sent", BIG, 1468)
    print(f"curl 32 MiB blksize 1468: {seconds:.2f}s ({BIG / seconds / 1e6:.1f} MB/s)")


@pytest.mark.usefixtures("lockstep_loop")
async def test_concurrent_downloads(srv: Running, boot_root: Path) -> None:
    want = (boot_root / "small.bin").read_bytes()
    results: list[bytes | Error] = []

    def fetch(i: int) -> None:
        with Client(srv.server.port) as client:
            options = {"blksize": "1468"} if i % 2 else {}
            results.append(client.get("small.bin", options))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(anyio.to_thread.run_sync, fetch, i)
    assert len(results) == 8
    assert all(result == want for result in results)
    await srv.event(8)
    assert [e.outcome for e in srv.events] == ["sent"] * 8
    assert srv.server.stats["transfers_completed"] == 8
    assert len({e.client for e in srv.events}) == 8


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "escape", "sub/../../secret", "sub"])
async def test_paths_outside_the_root_are_access_violations(srv: Running, name: str) -> None:
    reply = await anyio.to_thread.run_sync(_error_for, srv.server.port, ReadRequest(name))
    assert reply.code is ErrorCode.ACCESS_VIOLATION
    assert (await srv.event()).outcome == "denied"
    assert srv.server.stats["errors_sent"] == 1


async def test_a_file_swapped_in_after_the_path_check_is_refused(
    srv: Running, boot_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree changes between the server's path check and its open (a directory on the way becomes a
    symlink out of the root): the server asks the kernel what it opened, refuses it and closes it."""
    from bramble.boot import tftp

    real_open = os.open
    opened: list[int] = []

    def swapped(path: object, flags: int, *args: object) -> int:
        fd = real_open(boot_root.parent / "secret", flags, *args)
        opened.append(fd)
        return fd

    monkeypatch.setattr(tftp.os, "open", swapped)
    reply = await anyio.to_thread.run_sync(_error_for, srv.server.port, ReadRequest("small.bin"))
    assert reply.code is ErrorCode.ACCESS_VIOLATION
    assert (await srv.event()).outcome == "denied"
    secret = str((boot_root.parent / "secret").resolve())
    left_open = [fd for fd in opened if _fd_target(fd) == secret]  # the number may be reused by now
    assert opened and not left_open


def _fd_target(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


async def test_symlink_inside_root_is_served(srv: Running, boot_root: Path) -> None:
    with Client(srv.server.port) as client:
        data = await anyio.to_thread.run_sync(client.get, "inside-link")
    assert data == (boot_root / "sub" / "tiny.txt").read_bytes()


async def test_missing_file_is_error_1(srv: Running) -> None:
    reply = await anyio.to_thread.run_sync(_error_for, srv.server.port, ReadRequest("nope.bin"))
    assert reply.code is ErrorCode.FILE_NOT_FOUND
    assert (await srv.event()).outcome == "not_found"


async def test_write_request_is_refused(srv: Running, boot_root: Path) -> None:
    reply = await anyio.to_thread.run_sync(_error_for, srv.server.port, WriteRequest("new.bin"))
    assert reply.code is ErrorCode.ACCESS_VIOLATION
    assert not (boot_root / "new.bin").exists()


async def test_oversized_file_is_refused(boot_root: Path, tmp_path: Path) -> None:
    async for running in _serve(boot_root, tmp_path / "out", max_file_bytes=1000):
        reply = await anyio.to_thread.run_sync(_error_for, running.server.port, ReadRequest("sub/tiny.txt"))
        assert reply.code is ErrorCode.ACCESS_VIOLATION
        assert (await running.event()).outcome == "denied"


# -- robustness ------------------------------------------------------------------------------


async def test_malformed_datagram_is_counted_and_server_keeps_serving(srv: Running, boot_root: Path) -> None:
    def run() -> bytes | Error:
        with Client(srv.server.port) as client:
            client.send(b"\x00\x01no-terminator")
            client.send(b"\xff\xff garbage")
            return client.get("sub/tiny.txt")

    assert await anyio.to_thread.run_sync(run) == (boot_root / "sub" / "tiny.txt").read_bytes()
    # The client is done once it has sent its last ACK; the server counts the transfer when
    # that ACK arrives, so wait for the transfer's event before reading the counters.
    assert (await srv.event()).outcome == "sent"
    assert srv.server.stats["malformed"] == 2
    assert srv.server.stats["transfers_completed"] == 1


async def test_tsize_probe_then_error_8_ends_quietly(srv: Running) -> None:
    def run() -> Packet:
        with Client(srv.server.port) as client:
            client.send(ReadRequest("small.bin", "octet", {"tsize": "0", "blksize": "1468", "bogus": "1"}))
            oack, addr = client.recv()
            client.send(Error(ErrorCode.OPTION_REFUSED, "just probing"), addr)
            return oack

    oack = await anyio.to_thread.run_sync(run)
    assert oack == OptionAck({"tsize": str(SMALL), "blksize": "1468"})
    event = await srv.event()
    assert (event.outcome, event.bytes_sent) == ("aborted", 0)
    assert srv.server.stats["errors_sent"] == 0


async def test_client_that_vanishes_after_oack_is_aborted_not_timeout(fast_srv: Running) -> None:
    def run() -> Packet:
        with Client(fast_srv.server.port) as client:
            client.send(ReadRequest("small.bin", "octet", {"tsize": "0"}))
            return client.recv()[0]

    assert isinstance(await anyio.to_thread.run_sync(run), OptionAck)
    assert (await fast_srv.event()).outcome == "aborted"


@pytest.mark.usefixtures("lockstep_loop")
async def test_retransmits_with_backoff_then_times_out(boot_root: Path, tmp_path: Path) -> None:
    # 0.3 s then 0.6 s: wide enough that a loaded host's scheduling delays cannot hide the doubling.
    async for running in _serve(boot_root, tmp_path / "out", initial_timeout=0.3, retries=2):
        await _check_backoff(running)


async def _check_backoff(running: Running) -> None:
    def run() -> list[float]:
        with Client(running.server.port) as client:
            client.send(ReadRequest("sub/tiny.txt"))
            arrivals = []
            for _ in range(3):  # the first send plus `retries` retransmissions, never acknowledged
                packet, _ = client.recv()
                assert packet == Data(1, b"x" * 512)
                arrivals.append(time.monotonic())
            return arrivals

    arrivals = await anyio.to_thread.run_sync(run)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert gaps[1] > gaps[0] * 1.2  # exponential backoff
    assert (await running.event()).outcome == "timeout"


@pytest.mark.usefixtures("lockstep_loop")
async def test_unknown_tid_gets_error_5_and_transfer_continues(srv: Running, boot_root: Path) -> None:
    def run() -> tuple[Packet, bytes]:
        with Client(srv.server.port) as client, Client(srv.server.port) as intruder:
            client.send(ReadRequest("sub/tiny.txt"))
            first, tid = client.recv()
            assert first == Data(1, b"x" * 512)
            intruder.send(Ack(1), tid)
            stray, source = intruder.recv()
            assert source == tid  # the ERROR comes from the transfer's port, as RFC 1350 wants
            data = [b"x" * 512]
            client.send(Ack(1), tid)
            while True:
                packet, _ = client.recv()
                assert isinstance(packet, Data)
                data.append(packet.data)
                client.send(Ack(packet.block), tid)
                if len(packet.data) < 512:
                    return stray, b"".join(data)

    stray, data = await anyio.to_thread.run_sync(run)
    assert isinstance(stray, Error) and stray.code is ErrorCode.UNKNOWN_TID
    assert srv.server.stats["errors_sent"] == 1
    assert data == (boot_root / "sub" / "tiny.txt").read_bytes()
    assert (await srv.event()).outcome == "sent"


async def test_window_resends_from_the_block_after_a_partial_ack(srv: Running, boot_root: Path) -> None:
    def run() -> list[int]:
        with Client(srv.server.port) as client:
            client.send(ReadRequest("sub/tiny.txt", "octet", {"windowsize": "4"}))  # 4096 bytes = 8 blocks + 1
            oack, tid = client.recv()
            assert oack == OptionAck({"windowsize": "4"})
            client.send(Ack(0), tid)
            seen = [client.recv()[0] for _ in range(4)]
            assert [p.block for p in seen if isinstance(p, Data)] == [1, 2, 3, 4]
            client.send(Ack(2), tid)  # pretend block 3 was lost
            blocks = []
            for _ in range(4):
                packet, _ = client.recv()
                assert isinstance(packet, Data)
                blocks.append(packet.block)
            return blocks

    assert await anyio.to_thread.run_sync(run) == [3, 4, 5, 6]


@pytest.mark.usefixtures("lockstep_loop")
async def test_netascii_is_translated(srv: Running) -> None:
    def run() -> bytes | Error:
        with Client(srv.server.port) as client:
            return client.get("text.cfg", {"tsize": "0", "blksize": "64"}, mode="netascii")

    assert await anyio.to_thread.run_sync(run) == b"line\r\nbare\r\0cr\r\0\r\n" * 100
    assert (await srv.event()).blksize == 64


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendto"])
async def test_atftp_window_wraps_block_numbers(srv: Running, boot_root: Path, gso: bool) -> None:
    """32 MiB at blksize 512 with a window of 16: 65537 blocks, sent with and without UDP GSO."""
    atftp = _need("atftp")
    srv.server._gso_usable = gso
    out = srv.out / "big.bin"
    cmd = [atftp, "--get", "-r", "big.bin", "-l", str(out), "--option", "blksize 512", "--option", "windowsize 16"]
    await _run_client([*cmd, HOST, str(srv.server.port)])
    assert _sha(out) == _sha(boot_root / "big.bin")
    event = await srv.event()
    assert (event.outcome, event.bytes_sent, event.blksize, event.windowsize) == ("sent", BIG, 512, 16)


@pytest.mark.usefixtures("lockstep_loop")
async def test_duplicate_ack_in_lock_step_is_not_answered(patient_srv: Running) -> None:
    """Sorcerer's Apprentice (RFC 1123 4.2.3.1): a repeated ACK must not double the DATA stream."""

    def run() -> list[int]:
        with Client(patient_srv.server.port) as client:
            client.send(ReadRequest("sub/tiny.txt"))
            first, tid = client.recv()
            assert first == Data(1, b"x" * 512)
            client.send(Ack(1), tid)
            client.send(Ack(1), tid)  # duplicate
            client.send(Ack(0), tid)  # old
            blocks = []
            second, _ = client.recv()
            assert isinstance(second, Data)
            blocks.append(second.block)
            client.send(Ack(2), tid)
            third, _ = client.recv()
            assert isinstance(third, Data)
            blocks.append(third.block)
            client.sock.settimeout(0.3)  # the window of a wrongly resent block 2 or 3
            with pytest.raises(TimeoutError):
                client.recv()
            client.send(Error(ErrorCode.NOT_DEFINED, "enough"), tid)
            return blocks

    assert await anyio.to_thread.run_sync(run) == [2, 3]
    assert (await patient_srv.event()).outcome == "aborted"


@pytest.mark.usefixtures("lockstep_loop")
async def test_lock_step_resends_the_unacknowledged_block_after_a_timeout(boot_root: Path, tmp_path: Path) -> None:
    """A DATA lost in mid-file (its ACK never comes) is resent after the timeout, then the transfer goes on."""
    want = (boot_root / "small.bin").read_bytes()
    async for running in _serve(boot_root, tmp_path / "out", initial_timeout=0.2, retries=3):

        def run(port: int = running.server.port) -> tuple[bytes, list[int]]:
            with Client(port) as client:
                client.send(ReadRequest("small.bin"))
                chunks: list[bytes] = []
                seen: list[int] = []
                withheld = False
                while True:
                    packet, tid = client.recv()
                    assert isinstance(packet, Data)
                    seen.append(packet.block)
                    if packet.block == 300 and not withheld:  # past the first slab (256 blocks of 512)
                        withheld = True  # as if this DATA were lost: no ACK, wait for it again
                        continue
                    if packet.block == len(chunks) + 1:
                        chunks.append(packet.data)
                    client.send(Ack(packet.block), tid)
                    if len(packet.data) < 512:
                        return b"".join(chunks), seen

        data, seen = await anyio.to_thread.run_sync(run)
        assert data == want
        assert seen[298:302] == [299, 300, 300, 301]  # block 300 twice, nothing else repeated
        assert len(seen) == len(want) // 512 + 2
        event = await running.event()
        assert (event.outcome, event.bytes_sent) == ("sent", len(want))


async def test_duplicate_ack_in_a_window_resends_it_once(patient_srv: Running) -> None:
    def run() -> list[int]:
        with Client(patient_srv.server.port) as client:
            client.send(ReadRequest("sub/tiny.txt", "octet", {"windowsize": "4"}))
            _, tid = client.recv()
            client.send(Ack(0), tid)
            assert [p.block for p, _ in (client.recv() for _ in range(4)) if isinstance(p, Data)] == [1, 2, 3, 4]
            client.send(Ack(0), tid)  # "I lost block 1": the whole window again
            client.send(Ack(0), tid)  # again: ignored until the window moves
            blocks = []
            for _ in range(4):
                packet, _ = client.recv()
                assert isinstance(packet, Data)
                blocks.append(packet.block)
            client.sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                client.recv()
            client.send(Error(ErrorCode.NOT_DEFINED, "enough"), tid)
            return blocks

    assert await anyio.to_thread.run_sync(run) == [1, 2, 3, 4]


async def test_oack_answers_timeout_and_blksize_as_integers(srv: Running) -> None:
    def run() -> Packet:
        with Client(srv.server.port) as client:
            options = {"blksize": "1024", "timeout": "3", "tsize": "0", "windowsize": "8"}
            client.send(ReadRequest("small.bin", "octet", options))
            oack, tid = client.recv()
            client.send(Error(ErrorCode.OPTION_REFUSED, "probe"), tid)
            return oack

    oack = await anyio.to_thread.run_sync(run)
    assert oack == OptionAck({"blksize": "1024", "timeout": "3", "tsize": str(SMALL), "windowsize": "8"})


@pytest.mark.usefixtures("lockstep_loop")
async def test_close_aborts_a_transfer_in_flight(boot_root: Path, tmp_path: Path) -> None:
    async for running in _serve(boot_root, tmp_path / "out"):

        def start(port: int = running.server.port) -> tuple[socket.socket, tuple[str, int]]:
            client = Client(port)
            client.send(ReadRequest("big.bin"))
            first, tid = client.recv()
            assert first == Data(1, (boot_root / "big.bin").read_bytes()[:512])
            return client.sock, tid

        sock, _ = await anyio.to_thread.run_sync(start)
        try:
            assert any(t.name.startswith("tftp ") for t in threading.enumerate())
            await running.server.close()
            event = await running.event()
            assert (event.outcome, event.bytes_sent) == ("aborted", 0)
            assert running.server.stats["transfers_completed"] == 0
        finally:
            sock.close()


@pytest.mark.usefixtures("lockstep_loop")
async def test_file_that_shrinks_during_the_transfer_ends_early(boot_root: Path, tmp_path: Path) -> None:
    """The data ends where the file now ends (a short block), instead of hanging or sending junk."""
    root = tmp_path / "root"
    root.mkdir()
    victim = root / "shrinking.bin"
    victim.write_bytes(b"a" * 300_000)
    async for running in _serve(root, tmp_path / "out"):

        def run(port: int = running.server.port) -> bytes | Error:
            with Client(port) as client:
                client.send(ReadRequest("shrinking.bin", "octet", {"tsize": "0"}))
                oack, tid = client.recv()
                assert oack == OptionAck({"tsize": "300000"})
                victim.write_bytes(b"b" * 1000)  # truncated before any data was read
                client.send(Ack(0), tid)
                chunks = []
                while True:
                    packet, _ = client.recv()
                    assert isinstance(packet, Data)
                    chunks.append(packet.data)
                    client.send(Ack(packet.block), tid)
                    if len(packet.data) < 512:
                        return b"".join(chunks)

        assert await anyio.to_thread.run_sync(run) == b"b" * 1000
        event = await running.event()
        assert (event.outcome, event.bytes_sent) == ("sent", 1000)


async def test_non_requests_at_the_request_port_are_ignored_and_counted(srv: Running) -> None:
    def run() -> None:
        with Client(srv.server.port) as client:
            client.send(Ack(1))
            client.send(Data(1, b"x"))
            client.send(Error(ErrorCode.NOT_DEFINED, "hi"))
            client.send(OptionAck({"blksize": "512"}))

    await anyio.to_thread.run_sync(run)
    with anyio.fail_after(5):
        while srv.server.stats["ignored"] < 4:
            await anyio.sleep(0.01)
    assert srv.server.stats["ignored"] == 4
    assert srv.server.stats["malformed"] == 0
    assert srv.server.stats["transfers_started"] == 0


async def test_requests_beyond_the_transfer_limit_get_error_0(srv: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tftp_module, "_MAX_TRANSFERS", 1)

    def refuse() -> Error:
        with Client(srv.server.port) as first, Client(srv.server.port) as second:
            first.send(ReadRequest("small.bin"))
            _, tid = first.recv()
            second.send(ReadRequest("small.bin"))
            reply, _ = second.recv()
            first.send(Error(ErrorCode.NOT_DEFINED, "done"), tid)
            assert isinstance(reply, Error)
            return reply

    reply = await anyio.to_thread.run_sync(refuse)
    assert reply.code is ErrorCode.NOT_DEFINED and "busy" in reply.message
    await srv.event(2)
    assert sorted(e.outcome for e in srv.events) == ["aborted", "denied"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.usefixtures("lockstep_loop")
async def test_ipv6_transfer_and_stranger(boot_root: Path, tmp_path: Path) -> None:
    async for running in _serve_on("::1", boot_root, tmp_path / "out"):

        def run(port: int = running.server.port) -> tuple[bytes, Packet]:
            with (
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock,
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as intruder,
            ):
                sock.settimeout(5)
                intruder.settimeout(5)
                sock.sendto(encode(ReadRequest("sub/tiny.txt")), ("::1", port))
                chunks = []
                stray: Packet | None = None
                while True:
                    data, tid = sock.recvfrom(70000)
                    packet = decode(data)
                    assert isinstance(packet, Data)
                    if stray is None:
                        intruder.sendto(encode(Ack(1)), tid)
                        stray = decode(intruder.recvfrom(70000)[0])
                    chunks.append(packet.data)
                    sock.sendto(encode(Ack(packet.block)), tid)
                    if len(packet.data) < 512:
                        return b"".join(chunks), stray

        data, stray = await anyio.to_thread.run_sync(run)
        assert data == (boot_root / "sub" / "tiny.txt").read_bytes()
        assert isinstance(stray, Error) and stray.code is ErrorCode.UNKNOWN_TID
        assert (await running.event()).outcome == "sent"


@pytest.mark.parametrize(("blksize", "windowsize"), [(65464, 2), (8192, 8), (1468, 64)])
async def test_atftp_large_blocks_and_windows(boot_root: Path, tmp_path: Path, blksize: int, windowsize: int) -> None:
    """Blocks too big for one GSO send, GSO runs shorter than the window, and the largest window.

    (65464 x 4 is not tested: four 64 KiB datagrams overflow the atftp client's default receive
    buffer, and it fails the same way against atftpd.)
    """
    atftp = _need("atftp")
    async for running in _serve(boot_root, tmp_path / "out", max_blksize=65464):
        out = running.out / "big.bin"
        cmd = [atftp, "--get", "-r", "big.bin", "-l", str(out)]
        cmd += ["--option", f"blksize {blksize}", "--option", f"windowsize {windowsize}"]
        await _run_client([*cmd, HOST, str(running.server.port)])
        assert _sha(out) == _sha(boot_root / "big.bin")
        event = await running.event()
        assert (event.outcome, event.bytes_sent, event.blksize, event.windowsize) == ("sent", BIG, blksize, windowsize)
