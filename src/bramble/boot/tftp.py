"""Read-only TFTP server for network boot (RFC 1350 + 2347/2348/2349/7440).

Firmware fetches kernels and initrds over TFTP, so the server must be fast on loopback-class
links, never crash on hostile input, and never serve anything outside its root.

Requests arrive on an asyncio datagram endpoint; every accepted RRQ is then served by its own
thread on its own blocking UDP socket (the server's TID). A lock-step transfer is one receive
and one send per block: a blocking thread makes exactly those two system calls, while an event
loop adds a readiness poll, a scheduler pass and per-packet objects (about 4x the CPU per
block). The GIL is released while a thread waits in ``recv``, so transfers do not hold up
each other or the loop. Everything a thread learns (counters, the final event) is handed back
to the loop with ``call_soon_threadsafe``, so ``stats`` is only ever written on the loop.

The transfer socket is connect()ed to the client: the kernel caches the route and drops the
address handling per packet (about 20 % less time per lock-step round trip). Strangers still
get ERROR 5 (RFC 1350) from the transfer's port: a second, unconnected SO_REUSEPORT socket on
the same port receives whatever the connected one does not match (Linux prefers the connected
socket for its peer and never picks it for anyone else), and the event loop answers those.

File data is read with ``preadv`` straight into buffers laid out as ready DATA packets
(header, payload, header, payload, ...): sending a block is one slice and one ``send``, and a
window of blocks is one ``sendmsg`` with UDP GSO where the kernel and route allow it.

In lock-step the server's whole part of each round trip is the time from the client's ACK to
our next DATA. ``_lockstep.c`` runs that loop over one buffer of ready packets in C with the GIL
released (2-4 us less CPU per block than the Python loop) and returns to Python for everything
else. Before it sleeps it may poll for the ACK for up to ``spin_us``, which saves a fast
client (a VM on this host) a scheduler wake-up per block and is dropped for slow ones. The
Python loop does the same without the poll, and is used when the package was installed without
a C compiler.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from bramble.boot.confine import opened_below
from bramble.proto.tftp import (
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    WINDOWSIZE_MAX,
    WINDOWSIZE_MIN,
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
Address = tuple[Any, ...]  # (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6

_SLAB_BYTES = 128 * 1024  # file data per buffer; two buffers per transfer
_IOV_MAX = 1024  # Linux limit on iovecs per preadv
_NETASCII_CHUNK = 64 * 1024
_RECV_BYTES = 65536  # a whole datagram, so an oversized one is never silently truncated
_MAX_TRANSFERS = 512  # concurrent transfers (threads); more RRQs get ERROR 0 until one ends
_SOL_UDP, _UDP_SEGMENT = 17, 103  # <linux/udp.h>; socket.UDP_SEGMENT is not in Python 3.11
_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES = 64, 65000  # kernel caps: UDP_MAX_SEGMENTS, one IP datagram
# Errors meaning "GSO is not possible here" (no offload, segment above the route MTU, old
# kernel), as opposed to a transient loss like ENOBUFS.
_GSO_UNSUPPORTED = {errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE}
_LOW_BYTES = bytes(range(256)) * (_IOV_MAX // 256 + 2)
_UNKNOWN_END = 1 << 62  # Slabs.last_block before the end of a netascii file is found
_gso_size = struct.Struct("=H").pack

_LockstepRun = Callable[[int, bytearray, memoryview, int, int, int, int, int, int, int], tuple[int, int, int, int, int]]
_lockstep_run: _LockstepRun | None
_SPIN_CREDIT = 0  # what a transfer starts with; see _lockstep.c
try:  # the lock-step loop in C; absent when the package was installed without a compiler
    from bramble.boot import _lockstep

    _lockstep_run, _SPIN_CREDIT = _lockstep.run, _lockstep.credit_max()
except ImportError:  # pragma: no cover - the Python loop in _Transfer._serve does the same, slower
    _lockstep_run = None


@dataclass(frozen=True)
class TftpEvent:
    """One finished (or refused) request, small enough to become an audit event later."""

    client: tuple[str, int]
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


class _ReadFailed(Exception):
    """The served file could not be read; the transfer ends with ERROR 0."""


# -- file data -----------------------------------------------------------------------------------


class _OctetSource:
    """Fills block payload buffers from the file with preadv: no copies, one call per slab."""

    def __init__(self, fd: int, size: int, blksize: int) -> None:
        self._fd, self._size, self._blksize = fd, size, blksize

    def read_blocks(self, payloads: list[memoryview], first_block: int) -> int:
        """Fill `payloads` (one per block, in order) starting at zero-based block `first_block`.

        Returns the bytes read; only the last filled block may be short. Stops at the size
        measured at open, so the tsize we announced stays true if the file grows meanwhile.
        """
        blksize = self._blksize
        offset = first_block * blksize
        remaining = self._size - offset
        got = 0
        for start in range(0, len(payloads), _IOV_MAX):
            want = min(remaining - got, min(_IOV_MAX, len(payloads) - start) * blksize)
            if want <= 0:
                break
            count = -(-want // blksize)
            chunk = payloads[start : start + count]
            tail = want - (count - 1) * blksize
            if tail < blksize:
                chunk[-1] = chunk[-1][:tail]
            n = os.preadv(self._fd, chunk, offset + got)
            got += n
            if n < want:  # the file shrank: end the transfer where the data ends
                break
        return got

    def close(self) -> None:
        os.close(self._fd)


class _NetasciiSource:
    """Translates LF -> CR LF and CR -> CR NUL on the fly (RFC 764), moving forward only.

    Block boundaries do not follow file offsets, so `first_block` is ignored: the transfer
    asks for slabs strictly in order.
    """

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._left = fh, size
        self._pending = b""

    def read_blocks(self, payloads: list[memoryview], first_block: int) -> int:
        wanted = sum(len(p) for p in payloads)
        parts, have = [self._pending], len(self._pending)
        while have < wanted and self._left > 0:
            chunk = self._fh.read(min(_NETASCII_CHUNK, self._left))
            if not chunk:
                self._left = 0
                break
            self._left -= len(chunk)
            chunk = chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._pending = data[wanted:]
        data = data[:wanted]
        pos = 0
        for payload in payloads:
            piece = data[pos : pos + len(payload)]
            payload[: len(piece)] = piece
            pos += len(piece)
            if len(piece) < len(payload):
                break
        return pos

    def close(self) -> None:
        self._fh.close()


_Source = _OctetSource | _NetasciiSource


def _block_number_bytes(first: int, count: int) -> tuple[bytes, bytes]:
    """High and low bytes of the 16-bit block numbers of `count` blocks from `first` (wrapping)."""
    start = first & 0xFF
    low = _LOW_BYTES[start : start + count]
    if len(low) < count:  # a window wider than IOV_MAX blocks
        low = (bytes(range(256)) * (count // 256 + 2))[start : start + count]
    high = []
    number, left = first, count
    while left:
        run = min(left, 256 - (number & 0xFF))  # the high byte changes every 256 blocks
        high.append(bytes([(number >> 8) & 0xFF]) * run)
        number, left = number + run, left - run
    return b"".join(high), low


class _Slabs:
    """The file as ready DATA packets, `per_slab` blocks at a time, in two alternating buffers.

    Block k (1-based and absolute, so rollover past 65535 is only an encoding detail) lives in
    slab (k-1) // per_slab. Loading a slab overwrites the one two behind it; since per_slab >=
    windowsize, the unacknowledged blocks of a window always stay in memory for resending.
    """

    def __init__(self, source: _Source, blksize: int, windowsize: int, known_size: int | None) -> None:
        self.blksize = blksize
        self.packet_size = blksize + 4
        # Capped at IOV_MAX blocks so a tiny blksize cannot make thousands of views per transfer.
        self.per_slab = max(windowsize, min(_SLAB_BYTES // blksize, _IOV_MAX), 1)
        self._source = source
        self.views: list[memoryview] = []
        self._payloads: list[list[memoryview]] = []
        self._whole: list[list[memoryview]] = []
        for _ in range(2):
            view = memoryview(bytearray(self.per_slab * self.packet_size))
            starts = range(0, len(view), self.packet_size)
            for i in starts:
                view[i : i + 2] = b"\x00\x03"
            self.views.append(view)
            self._payloads.append([view[i + 4 : i + self.packet_size] for i in starts])
            self._whole.append([view[i : i + self.packet_size] for i in starts])
        # One view per DATA packet, so the lock-step path sends by list index; the final block's
        # entry is swapped for a shorter view while its slab is loaded.
        self._packets = [list(whole) for whole in self._whole]
        self._loaded = [-1, -1]
        self.current: tuple[list[memoryview], int] = ([], -self.per_slab)  # last packets_from()
        self.current_view = self.views[0]  # and the buffer those packets are in
        # The final block is the first one shorter than blksize (possibly empty). Known from the
        # size for octet; found while reading for netascii (and if an octet file shrinks).
        self.last_block = _UNKNOWN_END
        self.last_len = 0
        if known_size is not None:
            self.last_block, self.last_len = known_size // blksize + 1, known_size % blksize

    def locate(self, block: int) -> tuple[memoryview, int, int]:
        """(buffer, offset of the DATA packet, payload length) for block `block`."""
        slab, index = divmod(block - 1, self.per_slab)
        which = slab & 1
        if self._loaded[which] != slab:
            self._load(slab, which)
        length = self.last_len if block == self.last_block else self.blksize
        return self.views[which], index * self.packet_size, length

    def packets_from(self, block: int) -> tuple[list[memoryview], int]:
        """The DATA packets of the slab holding `block`, and the block number of the first one."""
        slab = (block - 1) // self.per_slab
        which = slab & 1
        if self._loaded[which] != slab:
            self._load(slab, which)
        self.current = self._packets[which], slab * self.per_slab + 1
        self.current_view = self.views[which]
        return self.current

    def _load(self, slab: int, which: int) -> None:
        first = slab * self.per_slab
        try:
            got = self._source.read_blocks(self._payloads[which], first)
        except OSError as exc:
            raise _ReadFailed(str(exc)) from exc
        full, short = divmod(got, self.blksize)
        present = self.per_slab
        if full < self.per_slab:
            present = full + 1
            end = first + full + 1
            if end < self.last_block:
                self.last_block, self.last_len = end, short
        view, size = self.views[which], self.packet_size
        # Block numbers for every packet of the slab in two strided writes (high bytes, low bytes)
        # rather than one pack_into per block.
        span = present * size
        view[2:span:size], view[3:span:size] = _block_number_bytes(first + 1, present)
        packets = self._packets[which] = list(self._whole[which])
        if 0 <= self.last_block - first - 1 < self.per_slab:
            index = self.last_block - first - 1
            packets[index] = view[index * size : index * size + 4 + self.last_len]
        self._loaded[which] = slab

    def bytes_through(self, block: int) -> int:
        """Payload bytes in blocks 1..block."""
        if block and block == self.last_block:
            return (block - 1) * self.blksize + self.last_len
        return block * self.blksize

    def close(self) -> None:
        self._source.close()


# -- one transfer --------------------------------------------------------------------------------


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO on a blocking socket: a timed wait with no poll() before each recvfrom."""
    whole = int(seconds)
    micro = max(int((seconds - whole) * 1e6), 0 if whole else 1)  # all zeros would mean "wait forever"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", whole, micro))


def _restore_timeout(sock: socket.socket, timeout: float, base: float) -> float:
    """Back to the base timeout after a backoff (one setsockopt, only if it changed)."""
    if timeout != base:
        _set_receive_timeout(sock, base)
    return base


class _Transfer:
    """One RRQ served from its own socket (the server's TID) by its own thread."""

    def __init__(
        self,
        server: TftpServer,
        sock: socket.socket,
        client: Address,
        filename: str,
        slabs: _Slabs,
        oack: dict[str, str],
        params: Negotiated,
    ) -> None:
        self._server, self._sock, self._client, self._filename = server, sock, client, filename
        self._slabs, self._oack, self._params = slabs, oack, params
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[TftpEvent] = self._loop.create_future()
        self._lock = threading.Lock()  # orders abort()'s shutdown against the thread's close
        self._closed = False
        self._aborting = False
        self._started = time.monotonic()
        self._acked = 0
        self._received = 0
        self._gso = server._gso_usable
        self._thread = threading.Thread(target=self._run, name=f"tftp {filename}", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def abort(self) -> None:
        """Called on the loop: wake the thread (shutdown ends a blocked recvfrom) and let it finish."""
        with self._lock:
            self._aborting = True
            if not self._closed:
                # ENOTCONN on an unconnected UDP socket, but the blocked waiters are woken anyway.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    # -- thread side ---------------------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        outcome: Outcome = "aborted"
        try:
            outcome = self._serve()
        except _ReadFailed as exc:
            log.warning("tftp: reading %s failed: %s", self._filename, exc)
            self._send_error(Error(ErrorCode.NOT_DEFINED, "read error"))
        except Exception:
            log.exception("tftp: transfer of %s to %s failed", self._filename, self._client)
        finally:
            with self._lock:
                self._closed = True
                self._sock.close()
            self._slabs.close()
            event = TftpEvent(
                client=(str(self._client[0]), int(self._client[1])),
                filename=self._filename,
                outcome=outcome,
                bytes_sent=self._slabs.bytes_through(self._acked),
                blksize=self._params.blksize,
                windowsize=self._params.windowsize,
                seconds=time.monotonic() - self._started,
            )
            self._post(self._server._transfer_finished, self, event, self._received)

    def _send_error(self, error: Error) -> None:
        try:
            self._sock.send(encode(error))
        except OSError:
            return
        self._post(self._server._count, "errors_sent")

    def _send_blocks(self, first: int, last: int) -> int:
        """Send blocks first..last, stopping after the file's final block; return the last sent."""
        slabs, sock = self._slabs, self._sock
        size, per_slab = slabs.packet_size, slabs.per_slab
        segments = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // size)  # 0 or 1 for big blocks: no GSO
        block = first
        while block <= last:
            if block > slabs.last_block:
                break
            view, offset, length = slabs.locate(block)
            final = slabs.last_block
            run_end = min(last, ((block - 1) // per_slab + 1) * per_slab, final)  # one buffer only
            if self._gso and segments > 1 and run_end > block:
                run_end = min(run_end, block + segments - 1)
                tail = slabs.last_len if run_end == final else slabs.blksize
                end = offset + (run_end - block) * size + 4 + tail
                try:
                    sock.sendmsg([view[offset:end]], [(_SOL_UDP, _UDP_SEGMENT, _gso_size(size))])
                except OSError as exc:
                    if exc.errno not in _GSO_UNSUPPORTED:
                        block = run_end + 1  # lost like any datagram; a timeout resends it
                        continue
                    log.debug("tftp: UDP GSO unavailable (%s); sending blocks one by one", exc)
                    self._gso = self._server._gso_usable = False
                    continue  # the same run again, without GSO
                block = run_end + 1
                continue
            # A send error is a lost datagram that a timeout resends. (A bare try costs nothing
            # per block on 3.11; contextlib.suppress would be a context manager per block.)
            try:  # noqa: SIM105
                sock.send(view[offset : offset + 4 + length])
            except OSError:
                pass
            block += 1
        return block - 1

    def _serve(self) -> Outcome:
        sock, slabs, server = self._sock, self._slabs, self._server
        windowsize = self._params.windowsize
        base_timeout = float(self._params.timeout) if self._params.timeout else server.initial_timeout
        timeout, attempts = base_timeout, 0
        deadline: float | None = None  # set lazily by packets that make no progress
        buffer = bytearray(_RECV_BYTES)
        # os.readv/os.write on the connected socket's descriptor: the same system calls as
        # recv_into/send, with less argument handling per call (about 0.5 us per block here).
        fd, readv, write = sock.fileno(), os.readv, os.write
        into = [buffer]
        oack = encode(OptionAck(self._oack)) if self._oack else b""
        acked = sent = 0  # absolute block numbers: last acknowledged, last sent
        received = 0
        # Lock-step fast path: the ACK we expect next (-1 while there is none, e.g. before the
        # OACK is acknowledged or with a window) and the DATA packet that answers it, prepared
        # while the client works (None once the final block is out).
        expected = -1
        following: memoryview | None = None
        per_slab, packet_size = slabs.per_slab, slabs.packet_size
        packets, base = slabs.current  # the slab `following` came from
        fast_run = _lockstep_run if self._params.windowsize == 1 else None
        spin_credit = _SPIN_CREDIT  # at 0 or below, the C loop found polling for this client a waste
        dup_resent = False
        _set_receive_timeout(sock, timeout)
        try:
            if oack:
                with contextlib.suppress(OSError):
                    write(fd, oack)
            else:
                sent = self._send_blocks(1, windowsize)
                if windowsize == 1:
                    expected, following = sent & 0xFFFF, self._packet_after(sent)
                    packets, base = slabs.current
            while True:
                if fast_run is not None and following is not None:
                    # Lock-step through the rest of this slab in C (see _lockstep.c); it hands back
                    # whatever is not the expected ACK, with the same meaning as readv's result.
                    start = sent + 1 - base
                    end = min(per_slab, slabs.last_block - base + 1)
                    spin_was = spin_credit
                    count, got, n, error, spin_credit = fast_run(
                        fd,
                        buffer,
                        slabs.current_view,
                        start,
                        end,
                        packet_size,
                        len(packets[end - 1]),
                        expected,
                        server.spin_ns() if spin_credit > 0 else 0,
                        spin_credit,
                    )
                    received += got
                    if spin_credit <= 0 < spin_was:
                        log.debug("tftp: %s answers too slowly to poll for; waiting in recv", self._client)
                    if count:
                        sent += count
                        acked, expected = sent - 1, sent & 0xFFFF
                        following = packets[start + count] if start + count < end else self._packet_after(sent)
                        packets, base = slabs.current
                        if attempts:  # progress: the retransmission clock starts over
                            attempts, timeout = 0, _restore_timeout(sock, timeout, base_timeout)
                        deadline = None
                    if n == -1:  # the slab is sent; the next one was prepared just above
                        continue
                    if n == -2 and error != errno.EAGAIN:  # (EAGAIN: SO_RCVTIMEO expired)
                        if not self._aborting:
                            log.warning("tftp: transfer socket for %s failed: %s", self._client, os.strerror(error))
                        return "aborted"
                    timed_out = n < 0
                else:
                    try:
                        n = readv(fd, into)
                    except BlockingIOError:  # SO_RCVTIMEO expired
                        timed_out = True
                    except ConnectionRefusedError:
                        # ICMP port unreachable for an earlier send. The client may only have restarted
                        # its socket; keep the old semantics (it is gone once the retries run out).
                        continue
                    except OSError as exc:
                        if not self._aborting:
                            log.warning("tftp: transfer socket for %s failed: %s", self._client, exc)
                        return "aborted"
                    else:
                        received += 1
                        timed_out = False
                if not timed_out:
                    if n == 4 and buffer[1] == 4 and buffer[0] == 0:
                        block = buffer[2] << 8 | buffer[3]
                        if block == expected:
                            # Lock-step: the block we sent is acknowledged, send the next one at
                            # once, then prepare the one after (off the round trip's critical path).
                            acked = sent
                            if following is None:
                                return "sent"
                            try:  # noqa: SIM105 (hot path, see _send_blocks)
                                write(fd, following)
                            except OSError:
                                pass
                            sent += 1
                            expected = sent & 0xFFFF
                            index = sent + 1 - base
                            if index < per_slab and sent < slabs.last_block:
                                following = packets[index]  # the usual case: same slab, not the end
                            else:
                                following = self._packet_after(sent)
                                packets, base = slabs.current
                            if attempts:  # progress: the retransmission clock starts over
                                attempts, timeout = 0, _restore_timeout(sock, timeout, base_timeout)
                            deadline = None
                            continue
                        delta = (block - acked) & 0xFFFF
                        progress = False
                        if oack:
                            if block == 0:  # the OACK is acknowledged: data starts
                                oack = b""
                                progress = True
                                sent = self._send_blocks(1, windowsize)
                                if windowsize == 1:
                                    expected, following = sent & 0xFFFF, self._packet_after(sent)
                                    packets, base = slabs.current
                        elif 0 < delta <= sent - acked:
                            # (With a window; in lock-step this is the fast path above.)
                            acked += delta
                            progress = True
                            if acked == slabs.last_block:
                                return "sent"
                            # A full-window ACK sends the next window; a partial one (the client lost
                            # a block) resends from the block after the acknowledged one, then goes on.
                            sent = self._send_blocks(acked + 1, acked + windowsize)
                            dup_resent = False
                        elif delta == 0 and windowsize > 1 and not dup_resent:
                            # The client re-acknowledged the last good block: it lost the head of
                            # the window. Resend once per window, never in lock-step (RFC 1123
                            # 4.2.3.1, Sorcerer's Apprentice).
                            dup_resent = True
                            self._send_blocks(acked + 1, sent)
                        if progress:  # the retransmission clock starts over
                            if attempts:
                                attempts, timeout = 0, _restore_timeout(sock, timeout, base_timeout)
                            deadline = None
                            continue
                        # An old, delayed ACK: ignored, but it does not hold off the timeout.
                    else:
                        if self._aborting:
                            return "aborted"
                        ended = self._unusual(buffer, n)
                        if ended is not None:
                            return ended
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + timeout
                    elif now >= deadline:
                        timed_out = True
                if not timed_out:
                    continue
                if self._aborting:
                    return "aborted"
                attempts += 1
                if attempts > server.retries:
                    # A client that never answers our OACK simply went away (tsize probe): not a failure.
                    return "aborted" if oack else "timeout"
                timeout *= 2
                deadline = None
                _set_receive_timeout(sock, timeout)
                if oack:
                    with contextlib.suppress(OSError):
                        write(fd, oack)
                else:
                    self._send_blocks(acked + 1, sent)
        finally:
            self._acked, self._received = acked, received

    def _packet_after(self, sent: int) -> memoryview | None:
        """The DATA packet for block sent+1, or None if `sent` was the final block.

        In lock-step this may load the next slab into the buffer of the one before the current
        one: nothing there is unacknowledged, and block `sent` (which a timeout may resend)
        stays where it is.
        """
        slabs, block = self._slabs, sent + 1
        if block > slabs.last_block:
            return None
        packets, base = slabs.packets_from(block)
        if block > slabs.last_block:
            return None
        return packets[block - base]

    def _unusual(self, buffer: bytearray, n: int) -> Outcome | None:
        """Anything from the client but a well-formed ACK: count and log it; its ERROR ends the transfer."""
        client = self._client
        try:
            packet = decode(bytes(buffer[:n]))
        except TftpDecodeError as exc:
            self._post(self._server._count, "malformed")
            log.debug("tftp: malformed datagram from %s during %s: %s", client, self._filename, exc.reason)
            return None
        if isinstance(packet, Error):
            # Includes ERROR 8 after our OACK (e.g. a tsize probe): the client is done, stay quiet.
            log.debug("tftp: %s aborted %s: %s %s", client, self._filename, packet.code.name, packet.message)
            return "aborted"
        self._post(self._server._count, "ignored")
        log.debug("tftp: unexpected %s from %s during transfer", type(packet).__name__, client)
        return None


class _StrangerWatch(asyncio.DatagramProtocol):
    """The unconnected sibling of a transfer socket: sees only packets from other TIDs."""

    def __init__(self, server: TftpServer, filename: str) -> None:
        self._server, self._filename = server, filename
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        stats = self._server.stats
        stats["received"] += 1
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            stats["malformed"] += 1
            log.debug("tftp: malformed datagram from %s during %s: %s", addr, self._filename, exc.reason)
            return
        stats["ignored"] += 1
        log.debug("tftp: %s from unknown TID %s during %s", type(packet).__name__, addr, self._filename)
        # RFC 1350: a packet from a foreign TID gets ERROR 5 and must not disturb the transfer;
        # an ERROR is never answered (two confused peers would ping-pong forever).
        if not isinstance(packet, Error) and self._transport is not None:
            self._transport.sendto(encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")), addr)
            stats["errors_sent"] += 1

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp: stranger socket error during %s: %s", self._filename, exc)


# -- the server ----------------------------------------------------------------------------------


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._server._on_request_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp listener socket error: %s", exc)


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
        spin_us: float = 20.0,
        on_event: Callable[[TftpEvent], None] | None = None,
    ) -> None:
        """`spin_us`: in lock-step, how long a transfer polls for the next ACK before it sleeps
        (0 never polls). Only while fewer transfers run than this process has CPUs, and only
        until the client proves slower than that (see ``_lockstep.c``)."""
        if not BLKSIZE_MIN <= max_blksize <= BLKSIZE_MAX:
            raise ValueError(f"max_blksize must be in {BLKSIZE_MIN}..{BLKSIZE_MAX}")
        if not WINDOWSIZE_MIN <= max_windowsize <= WINDOWSIZE_MAX:
            raise ValueError(f"max_windowsize must be in {WINDOWSIZE_MIN}..{WINDOWSIZE_MAX}")
        if retries < 0 or initial_timeout <= 0:
            raise ValueError("retries must be >= 0 and initial_timeout > 0")
        if not 0 <= spin_us <= 1000:
            raise ValueError("spin_us must be in 0..1000")
        self._spin_ns = int(spin_us * 1000)
        self._cpus = len(os.sched_getaffinity(0))
        self.root = root.resolve()
        self.host, self._port = host, port
        self.max_blksize, self.max_windowsize = max_blksize, max_windowsize
        self.retries, self.initial_timeout, self.max_file_bytes = retries, initial_timeout, max_file_bytes
        self._on_event = on_event
        # received: every datagram; malformed: undecodable; ignored: well-formed but out of place
        # (wrong port, wrong TID, wrong opcode). Transfer threads add "received" when they end.
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "malformed", "ignored", "transfers_started", "transfers_completed", "errors_sent"), 0
        )
        self._listener: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET
        self._tasks: set[asyncio.Task[None]] = set()
        self._transfers: dict[_Transfer, None] = {}
        self._closing = False
        self._gso_usable = True  # cleared by the first transfer whose GSO send the kernel refuses

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
        self._family = transport.get_extra_info("socket").family
        log.info("tftp: serving %s on %s:%d", self.root, self.host, self.port)

    async def close(self) -> None:
        """Stop listening and abort transfers in flight (their events report "aborted")."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._closing = True
        for transfer in list(self._transfers):
            transfer.abort()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def spin_ns(self) -> int:
        """The poll budget for a lock-step wait: none unless a CPU is left for each client.

        Called from transfer threads; reading the dict's size is atomic, and a transfer that
        is a moment late to count only shifts when polling starts or stops.
        """
        if self._cpus > 1 and len(self._transfers) < self._cpus:
            return self._spin_ns
        return 0

    # -- called on the loop by transfer threads ------------------------------------------------

    def _count(self, key: str) -> None:
        self.stats[key] += 1

    def _transfer_finished(self, transfer: _Transfer, event: TftpEvent, received: int) -> None:
        self.stats["received"] += received
        if not transfer.done.done():
            transfer.done.set_result(event)

    # -- request handling ----------------------------------------------------------------------

    def _on_request_datagram(self, data: bytes, addr: Address) -> None:
        self.stats["received"] += 1
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            self.stats["malformed"] += 1
            log.debug("tftp: malformed request from %s: %s", addr, exc.reason)
            return
        if not isinstance(packet, ReadRequest | WriteRequest):
            self.stats["ignored"] += 1
            log.debug("tftp: ignoring %s sent to the request port by %s", type(packet).__name__, addr)
            return
        task = asyncio.get_running_loop().create_task(self._serve(packet, tuple(addr)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open(self, request: ReadRequest | WriteRequest) -> tuple[int, int]:
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
            if not opened_below(fd, self.root):  # the tree changed between the check and the open
                raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "access violation", "denied")
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "not a regular file", "denied")
            if self.max_file_bytes is not None and info.st_size > self.max_file_bytes:
                raise _RequestRefused(ErrorCode.ACCESS_VIOLATION, "file too large", "denied")
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def _transfer_socket(self, client: Address | None = None) -> socket.socket:
        """A fresh blocking socket on an ephemeral port (the server's TID), connected to `client`."""
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if client is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, 0))
            sock.setblocking(True)
            if client is not None:
                sock.connect(client)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _watch_strangers(self, port: int, filename: str) -> asyncio.DatagramTransport | None:
        """Bind the unconnected sibling of a transfer socket, so other TIDs get ERROR 5."""
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, port))
            sock.setblocking(False)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _StrangerWatch(self, filename), sock=sock
            )
        except OSError as exc:
            sock.close()
            log.debug("tftp: no stranger socket for port %d (strangers get ICMP instead): %s", port, exc)
            return None
        return transport

    def _refuse(self, client: Address, error: Error) -> None:
        """Send ERROR from a new TID like any reply to a request, without a transfer thread."""
        try:
            sock = self._transfer_socket()
        except OSError as exc:
            log.warning("tftp: cannot open a socket to refuse %s: %s", client, exc)
            return
        with sock:
            sock.setblocking(False)
            try:
                sock.sendto(encode(error), client)
            except OSError as exc:
                log.debug("tftp: cannot send ERROR to %s: %s", client, exc)
                return
        self.stats["errors_sent"] += 1

    @staticmethod
    def _refusal_event(client: Address, filename: str, outcome: Outcome, started: float) -> TftpEvent:
        defaults = Negotiated()
        return TftpEvent(
            client=(str(client[0]), int(client[1])),
            filename=filename,
            outcome=outcome,
            bytes_sent=0,
            blksize=defaults.blksize,
            windowsize=defaults.windowsize,
            seconds=time.monotonic() - started,
        )

    def _emit(self, event: TftpEvent) -> None:
        if event.outcome == "sent":
            self.stats["transfers_completed"] += 1
        log.debug("tftp: %s", event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("tftp: on_event callback failed")

    async def _serve(self, request: ReadRequest | WriteRequest, client: Address) -> None:
        started = time.monotonic()
        try:
            if self._closing:
                raise _RequestRefused(ErrorCode.NOT_DEFINED, "server is shutting down", "aborted")
            if len(self._transfers) >= _MAX_TRANSFERS:
                raise _RequestRefused(ErrorCode.NOT_DEFINED, "server busy, try again", "denied")
            try:
                fd, size = self._open(request)
            except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop in resolve()
                log.warning("tftp: cannot open %r for %s: %s", request.filename, client, exc)
                raise _RequestRefused(ErrorCode.NOT_DEFINED, "cannot open file", "denied") from exc
        except _RequestRefused as refused:
            self._refuse(client, Error(refused.code, refused.message))
            self._emit(self._refusal_event(client, request.filename, refused.outcome, started))
            return
        netascii = request.mode == "netascii"
        oack, params = negotiate_read(
            request.options,
            file_size=None if netascii else size,
            max_blksize=self.max_blksize,
            max_windowsize=self.max_windowsize,
        )
        source: _Source
        if netascii:
            source = _NetasciiSource(os.fdopen(fd, "rb", buffering=0), size)
        else:
            source = _OctetSource(fd, size, params.blksize)
        try:
            slabs = _Slabs(source, params.blksize, params.windowsize, None if netascii else size)
            sock = self._transfer_socket(client)
        except OSError as exc:
            log.warning("tftp: cannot open a transfer socket for %s: %s", client, exc)
            source.close()
            return
        except BaseException:
            source.close()
            raise
        transfer = _Transfer(self, sock, client, request.filename, slabs, oack, params)
        strangers: asyncio.DatagramTransport | None = None
        try:
            # Watch for strangers before the first DATA leaves, so none of them meets a closed port.
            strangers = await self._watch_strangers(sock.getsockname()[1], request.filename)
            try:
                transfer.start()
            except RuntimeError as exc:  # no more threads
                log.warning("tftp: cannot start a transfer thread for %s: %s", client, exc)
                sock.close()
                slabs.close()
                self._emit(self._refusal_event(client, request.filename, "aborted", started))
                return
            self._transfers[transfer] = None
            self.stats["transfers_started"] += 1
            try:
                event = await asyncio.shield(transfer.done)
            except asyncio.CancelledError:
                transfer.abort()
                raise
            finally:
                self._transfers.pop(transfer, None)
        except asyncio.CancelledError:
            if not transfer.started:  # the thread would have closed these
                sock.close()
                slabs.close()
            raise
        finally:
            if strangers is not None:
                strangers.close()
        self._emit(event)
