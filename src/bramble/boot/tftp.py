"""Read-only asyncio TFTP server for network boot (RFC 1350 + 2347/2348/2349/7440).

Firmware fetches kernels and initrds over TFTP, so the server must be fast on loopback-class
links (windowed sends driven straight from datagram callbacks, no per-block task switches),
never crash on hostile input, and never serve anything outside its root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

from bramble.proto.tftp import (
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    WINDOWSIZE_MAX,
    WINDOWSIZE_MIN,
    Ack,
    Data,
    Error,
    ErrorCode,
    Negotiated,
    OptionAck,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
    negotiate_read,
)

__all__ = ["Outcome", "TftpEvent", "TftpServer"]

log = logging.getLogger(__name__)

Outcome = Literal["sent", "not_found", "denied", "aborted", "timeout"]
Address = tuple[str, int]
_READ_CHUNK = 256 * 1024  # buffered file reads: large sequential reads, block-sized slices


@dataclass(frozen=True)
class TftpEvent:
    """One finished (or refused) request, small enough to become an audit event later."""

    client: Address
    filename: str
    outcome: Outcome
    bytes_sent: int
    blksize: int
    windowsize: int
    seconds: float


class _RequestRefused(Exception):
    def __init__(self, code: ErrorCode, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.code, self.message, self.outcome = code, message, outcome


class _BlockReader:
    """Yields the file as DATA payloads of exactly `blksize` bytes, the last one shorter.

    netascii is translated on the fly (LF -> CR LF, CR -> CR NUL), so block boundaries do not
    follow file offsets; we only ever move forward because unacknowledged blocks are kept by
    the transfer's window.
    """

    def __init__(self, fh: BinaryIO, blksize: int, limit: int, netascii: bool) -> None:
        self._fh, self._blksize, self._left, self._netascii = fh, blksize, limit, netascii
        self._buf, self._pos = b"", 0

    def next_block(self) -> bytes:
        if len(self._buf) - self._pos < self._blksize and self._left > 0:
            chunks, have = [self._buf[self._pos :]], len(self._buf) - self._pos
            while have < self._blksize and self._left > 0:
                chunk = self._fh.read(min(_READ_CHUNK, self._left))
                if not chunk:
                    self._left = 0
                    break
                self._left -= len(chunk)
                if self._netascii:
                    chunk = chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
                chunks.append(chunk)
                have += len(chunk)
            # Slice by offset instead of trimming the buffer, which would copy it once per block.
            self._buf, self._pos = b"".join(chunks), 0
        block = self._buf[self._pos : self._pos + self._blksize]
        self._pos += len(block)
        return block

    def close(self) -> None:
        self._fh.close()


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server._on_request_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp listener socket error: %s", exc)


class _Transfer(asyncio.DatagramProtocol):
    """One RRQ on its own ephemeral socket (the server's TID), as a callback-driven state machine."""

    def __init__(
        self,
        server: TftpServer,
        client: Address,
        filename: str,
        reader: _BlockReader | None,
        oack: dict[str, str],
        params: Negotiated,
        refusal: Error | None = None,
    ) -> None:
        self._server, self._client, self._filename = server, client, filename
        self._reader, self._oack, self._params, self._refusal = reader, oack, params, refusal
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self.done: asyncio.Future[TftpEvent] = self._loop.create_future()
        self._started = time.monotonic()
        # Window of (absolute block number, encoded DATA) not yet acknowledged; numbers are
        # absolute (never wrapped) so rollover past 65535 is only an encoding detail.
        self._window: deque[tuple[int, bytes]] = deque()
        self._acked = 0
        self._next = 1
        self._eof_queued = False
        self._bytes_acked = 0
        self._awaiting_oack_ack = bool(oack)
        self._dup_resent = False
        self._base_timeout = float(params.timeout) if params.timeout else server.initial_timeout
        self._timeout = self._base_timeout
        self._attempts = 0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        if self._refusal is not None:
            self._send(encode(self._refusal))
            self._server.stats["errors_sent"] += 1
            return
        self._server.stats["transfers_started"] += 1
        if self._awaiting_oack_ack:
            self._send(encode(OptionAck(self._oack)))
        else:
            self._fill_and_send(0)
        self._arm(self._base_timeout)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        stats = self._server.stats
        stats["received"] += 1
        if self.done.done():
            return
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            stats["malformed"] += 1
            log.debug("tftp: malformed datagram from %s: %s", addr, exc.reason)
            return
        if tuple(addr[:2]) != tuple(self._client[:2]):
            # RFC 1350: a packet from a foreign TID gets ERROR 5 and must not disturb the transfer.
            if not isinstance(packet, Error) and self._transport is not None:
                self._transport.sendto(encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")), addr)
                stats["errors_sent"] += 1
            return
        if isinstance(packet, Error):
            # Includes ERROR 8 after our OACK (e.g. a tsize probe): the client is done, stay quiet.
            log.debug("tftp: %s aborted %s: %s %s", addr, self._filename, packet.code.name, packet.message)
            self._finish("aborted")
        elif isinstance(packet, Ack):
            self._on_ack(packet.block)
        else:
            log.debug("tftp: unexpected %s from %s during transfer", type(packet).__name__, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp transfer socket error for %s: %s", self._client, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("aborted")

    # -- protocol logic ----------------------------------------------------------------------

    def _send(self, datagram: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(datagram, self._client)

    def _fill_and_send(self, start: int) -> None:
        """Top the window up to `windowsize` blocks and send it from index `start` onwards."""
        assert self._reader is not None
        while len(self._window) < self._params.windowsize and not self._eof_queued:
            try:
                payload = self._reader.next_block()
            except OSError as exc:
                log.warning("tftp: reading %s failed: %s", self._filename, exc)
                self._send(encode(Error(ErrorCode.NOT_DEFINED, "read error")))
                self._server.stats["errors_sent"] += 1
                self._finish("aborted")
                return
            self._eof_queued = len(payload) < self._params.blksize
            self._window.append((self._next, encode(Data(self._next & 0xFFFF, payload))))
            self._next += 1
        for i in range(start, len(self._window)):
            self._send(self._window[i][1])
        self._dup_resent = False

    def _on_ack(self, block: int) -> None:
        if self._awaiting_oack_ack:
            if block == 0:
                self._awaiting_oack_ack = False
                self._progress()
                self._fill_and_send(0)
            return
        delta = (block - self._acked) & 0xFFFF
        if 0 < delta <= len(self._window):
            for _ in range(delta):
                _, datagram = self._window.popleft()
                self._bytes_acked += len(datagram) - 4
            self._acked += delta
            self._progress()
            if self._eof_queued and not self._window:
                self._finish("sent")
                return
            # A full-window ACK sends the next window; a partial one (the client lost a block)
            # resends from the block after the acknowledged one, then continues with new blocks.
            self._fill_and_send(0)
        elif delta == 0 and self._params.windowsize > 1 and not self._dup_resent:
            # The client re-acknowledged the last good block: it lost the head of this window.
            # Only once per window, and never in lock-step mode (RFC 1123 4.2.3.1, Sorcerer's Apprentice).
            self._dup_resent = True
            for _, datagram in self._window:
                self._send(datagram)
        # Anything else is an old, delayed ACK: ignore it.

    def _progress(self) -> None:
        self._attempts = 0
        self._timeout = self._base_timeout
        self._arm(self._timeout)

    def _arm(self, delay: float) -> None:
        self._deadline = self._loop.time() + delay
        # Re-arming on every ACK would churn the timer heap; a timer firing early re-arms itself.
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.done.done():
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._attempts += 1
        if self._attempts > self._server.retries:
            # A client that never answers our OACK simply went away (tsize probe): not a failure.
            self._finish("aborted" if self._awaiting_oack_ack else "timeout")
            return
        self._timeout *= 2
        if self._awaiting_oack_ack:
            self._send(encode(OptionAck(self._oack)))
        else:
            for _, datagram in self._window:
                self._send(datagram)
        self._arm(self._timeout)

    def _finish(self, outcome: Outcome) -> None:
        if self.done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._reader.close()
        if self._transport is not None:
            self._transport.close()
        event = TftpEvent(
            client=(str(self._client[0]), int(self._client[1])),
            filename=self._filename,
            outcome=outcome,
            bytes_sent=self._bytes_acked,
            blksize=self._params.blksize,
            windowsize=self._params.windowsize,
            seconds=time.monotonic() - self._started,
        )
        self.done.set_result(event)

    def finish_refusal(self, outcome: Outcome) -> None:
        self._finish(outcome)

    def abort(self) -> None:
        self._finish("aborted")


class TftpServer:
    """Serves files below `root` to TFTP clients; every request gets its own UDP socket."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "0.0.0.0",
        port: int = 69,
        max_blksize: int = 1468,
        max_windowsize: int = 64,
        retries: int = 5,
        initial_timeout: float = 1.0,
        max_file_bytes: int | None = None,
        on_event: Callable[[TftpEvent], None] | None = None,
    ) -> None:
        if not BLKSIZE_MIN <= max_blksize <= BLKSIZE_MAX:
            raise ValueError(f"max_blksize must be in {BLKSIZE_MIN}..{BLKSIZE_MAX}")
        if not WINDOWSIZE_MIN <= max_windowsize <= WINDOWSIZE_MAX:
            raise ValueError(f"max_windowsize must be in {WINDOWSIZE_MIN}..{WINDOWSIZE_MAX}")
        if retries < 0 or initial_timeout <= 0:
            raise ValueError("retries must be >= 0 and initial_timeout > 0")
        self.root = root.resolve()
        self.host, self._port = host, port
        self.max_blksize, self.max_windowsize = max_blksize, max_windowsize
        self.retries, self.initial_timeout, self.max_file_bytes = retries, initial_timeout, max_file_bytes
        self._on_event = on_event
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "malformed", "transfers_started", "transfers_completed", "errors_sent"), 0
        )
        self._listener: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transfers: set[_Transfer] = set()
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (useful with port=0); the configured one before start()."""
        if self._listener is None:
            return self._port
        return int(self._listener.get_extra_info("sockname")[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=(self.host, self._port))
        self._listener = transport
        log.info("tftp: serving %s on %s:%d", self.root, self.host, self.port)

    async def close(self) -> None:
        """Stop listening and abort transfers in flight (their events report "aborted")."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._closing = True
        for transfer in list(self._transfers):
            transfer.abort()
        # Let aborted transfers report their events; only requests still opening a socket are cancelled.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- request handling --------------------------------------------------------------------

    def _on_request_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.stats["received"] += 1
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            self.stats["malformed"] += 1
            log.debug("tftp: malformed request from %s: %s", addr, exc.reason)
            return
        if not isinstance(packet, ReadRequest | WriteRequest):
            log.debug("tftp: ignoring %s sent to the request port by %s", type(packet).__name__, addr)
            return
        task = asyncio.get_running_loop().create_task(self._serve(packet, (addr[0], addr[1])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open(self, request: ReadRequest | WriteRequest) -> tuple[BinaryIO, int]:
        """Open the requested file for reading, refusing anything that could escape the root."""
        if isinstance(request, WriteRequest):
            raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "server is read-only", "denied")
        if request.mode not in ("octet", "netascii"):
            raise _RequestRefused(ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {request.mode}", "denied")
        name = request.filename
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "access violation", "denied")
        target = (self.root / name).resolve()  # follows symlinks, so the check below sees the real file
        if not target.is_relative_to(self.root):
            raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "access violation", "denied")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise _RequestRefused(ErrorCode.FILE_NOT_FOUND, "file not found", "not_found") from None
        except OSError:
            raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "access violation", "denied") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "not a regular file", "denied")
            if self.max_file_bytes is not None and info.st_size > self.max_file_bytes:
                raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "file too large", "denied")
            fh = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        return fh, info.st_size

    async def _serve(self, request: ReadRequest | WriteRequest, client: Address) -> None:
        loop = asyncio.get_running_loop()
        params = Negotiated()
        try:
            try:
                fh, size = self._open(request)
            except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop in resolve()
                log.warning("tftp: cannot open %r for %s: %s", request.filename, client, exc)
                raise _RequestRefused(ErrorCode.NOT_DEFINED, "cannot open file", "denied") from exc
        except _RequestRefused as refused:
            transfer = _Transfer(self, client, request.filename, None, {}, params, Error(refused.code, refused.message))
            outcome: Outcome = refused.outcome
        else:
            # Serve the size measured now, so the tsize we announce stays true if the file grows.
            netascii = request.mode == "netascii"
            oack, params = negotiate_read(
                request.options,
                file_size=None if netascii else size,
                max_blksize=self.max_blksize,
                max_windowsize=self.max_windowsize,
            )
            reader = _BlockReader(fh, params.blksize, size, netascii)
            transfer = _Transfer(self, client, request.filename, reader, oack, params)
            outcome = "sent"
        bind_host = self.host
        try:
            await loop.create_datagram_endpoint(lambda: transfer, local_addr=(bind_host, 0))
        except OSError as exc:
            log.warning("tftp: cannot open a transfer socket for %s: %s", client, exc)
            if transfer._reader is not None:
                transfer._reader.close()
            return
        if transfer._refusal is not None:
            transfer.finish_refusal(outcome)
        elif self._closing:
            transfer.abort()
        self._transfers.add(transfer)
        try:
            event = await transfer.done
        finally:
            self._transfers.discard(transfer)
            transfer.abort()
        if event.outcome == "sent":
            self.stats["transfers_completed"] += 1
        log.debug("tftp: %s", event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("tftp: on_event callback failed")
