"""UDP syslog sink: machines being installed log here, and each message becomes an event.

The caller attributes a message to a machine by its source address, so the sink hands over
the decoded message together with the sender's IP. Malformed datagrams are dropped and
counted, and logged at most once per ``log_interval`` so a flood of garbage cannot flood the
daemon's own log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bramble.proto.syslog import SyslogDecodeError, SyslogMessage, decode

__all__ = ["SyslogSink", "SyslogStats"]

log = logging.getLogger(__name__)

_RECEIVE_BUFFER = 1 << 20  # absorb boot-time bursts (an installer logs thousands of lines at once)


@dataclass
class SyslogStats:
    received: int = 0
    accepted: int = 0
    malformed: int = 0
    callback_errors: int = 0


class _RateLimitedLog:
    """Log the first problem at once, then at most one summary line per interval."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            log.warning(fmt + " (and %d more since the last report)", *args, self._suppressed)
        else:
            log.warning(fmt, *args)
        self._suppressed = 0
        self._next = now + self._interval


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, sink: SyslogSink) -> None:
        self._sink = sink

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._sink._on_datagram(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("syslog socket error: %s", exc)


class SyslogSink:
    """Receives RFC 3164/5424 syslog over UDP and calls ``on_message(message, source_ip)``."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 514,
        on_message: Callable[[SyslogMessage, str], None] | None = None,
        *,
        log_interval: float = 60.0,
    ) -> None:
        self._host, self._requested_port = host, port
        self._on_message = on_message
        self._transport: asyncio.DatagramTransport | None = None
        self._bad_input = _RateLimitedLog(log_interval)
        self._bad_callback = _RateLimitedLog(log_interval)
        self.stats = SyslogStats()

    @property
    def port(self) -> int:
        if self._transport is None:
            raise RuntimeError("sink not started")
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        if self._transport is not None:
            raise RuntimeError("sink already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            sock.bind((self._host, self._requested_port))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        log.info("syslog sink on udp %s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _on_datagram(self, data: bytes, source: str) -> None:
        self.stats.received += 1
        try:
            message = decode(data, datetime.now())
        except SyslogDecodeError as err:
            self.stats.malformed += 1
            self._bad_input.warning("syslog: dropped a malformed datagram from %s: %s", source, err.reason)
            return
        self.stats.accepted += 1
        if self._on_message is None:
            return
        try:
            self._on_message(message, source)
        except Exception as exc:
            self.stats.callback_errors += 1
            self._bad_callback.warning("syslog: on_message failed for a message from %s: %r", source, exc)
