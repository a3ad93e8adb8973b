"""The syslog sink against real senders: util-linux logger (RFC 5424 and 3164), busybox syslogd -R,
raw garbage datagrams, and a hypothesis fuzz of the running sink. Everything on 127.0.0.1.

The sink runs on its own event loop in a thread, so the tests can be plain synchronous code that
drives real client processes and hypothesis.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.qemu_helpers import wait_for

from bramble.boot.syslog import SyslogSink
from bramble.proto.syslog import SyslogMessage

HOST = "127.0.0.1"


class ThreadedSink:
    """A SyslogSink on port 0, on an event loop in a daemon thread; messages collected in a list."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.messages: list[tuple[SyslogMessage, str]] = []
        self.fail_on = fail_on
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sink = SyslogSink(HOST, 0, self._collect, log_interval=3600)
        self._run(self.sink.start())

    def _collect(self, message: SyslogMessage, source: str) -> None:
        if self.fail_on is not None and self.fail_on in message.message:
            raise RuntimeError("callback exploded")
        self.messages.append((message, source))

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=10)

    @property
    def port(self) -> int:
        return self.sink.port

    def close(self) -> None:
        try:
            self._run(self.sink.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    def send(self, datagram: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, (HOST, self.port))

    def wait_received(self, count: int) -> None:
        wait_for(lambda: self.sink.stats.received >= count, 10, f"{count} datagrams at the sink")

    def find(self, text: str) -> tuple[SyslogMessage, str]:
        def search() -> tuple[SyslogMessage, str] | None:
            return next((m for m in list(self.messages) if text in m[0].message), None)

        return wait_for(search, 10, f"a message containing {text!r}")


@pytest.fixture
def sink() -> Iterator[ThreadedSink]:
    running = ThreadedSink(fail_on="EXPLODE")
    try:
        yield running
    finally:
        running.close()


def _logger(port: int, *args: str) -> None:
    subprocess.run(["logger", "--server", HOST, "--port", str(port), "--udp", *args], check=True, timeout=10)


def test_util_linux_logger_rfc5424(sink: ThreadedSink) -> None:
    _logger(
        sink.port,
        "--rfc5424",
        "-t",
        "installer",
        "-p",
        "local2.err",
        "--msgid",
        "STEP4",
        "--sd-id",
        "bramble@32473",
        "--sd-param",
        'phase="disk"',
        "partitioning done",
    )
    message, source = sink.find("partitioning done")
    assert source == HOST
    assert (message.format, message.facility_name, message.severity_name) == ("rfc5424", "local2", "err")
    assert (message.app_name, message.msgid) == ("installer", "STEP4")
    assert message.hostname == socket.gethostname()
    assert message.timestamp is not None and message.timestamp.tzinfo is not None
    assert message.structured_data is not None and '[bramble@32473 phase="disk"]' in message.structured_data


def test_util_linux_logger_rfc3164_with_pid(sink: ThreadedSink) -> None:
    _logger(sink.port, "--rfc3164", "-t", "anaconda", "--id=4242", "-p", "daemon.warning", "bsd style line")
    message, _ = sink.find("bsd style line")
    assert (message.format, message.facility_name, message.severity_name) == ("rfc3164", "daemon", "warning")
    assert (message.app_name, message.procid, message.message) == ("anaconda", "4242", "bsd style line")
    assert message.hostname == socket.gethostname()
    assert message.timestamp is not None


def test_logger_file_sends_one_message_per_line(sink: ThreadedSink, tmp_path: Path) -> None:
    lines = [f"line {i:03d}" for i in range(200)]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    _logger(sink.port, "--rfc5424", "-t", "bulk", "-f", str(tmp_path / "log.txt"))
    wait_for(lambda: len(sink.messages) >= 200, 10, "200 messages")
    assert sorted(m.message for m, _ in sink.messages) == lines


@pytest.mark.skipif(shutil.which("busybox") is None or shutil.which("unshare") is None, reason="busybox/unshare")
def test_busybox_syslogd_forwarding(sink: ThreadedSink, tmp_path: Path) -> None:
    """busybox syslogd -R forwards what busybox logger writes to /dev/log.

    /dev/log is a fixed path, so both run in a private mount namespace with a tmpfs over /dev:
    the host's /dev is never touched. The shell waits (bounded) for the test's go-ahead before
    stopping syslogd, so nothing is lost in flight.
    """
    done_flag = tmp_path / "received"
    script = f"""
        mount -t tmpfs bramble-test-dev /dev && mknod -m 666 /dev/null c 1 3 || exit 3
        busybox syslogd -n -R {HOST}:{sink.port} & pid=$!
        i=0; while [ ! -S /dev/log ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
        busybox logger -t bbtag -p daemon.err "hello from busybox"
        i=0; while [ ! -e {done_flag} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
        kill $pid; wait $pid
        exit 0
    """
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    try:
        message, source = sink.find("hello from busybox")
        done_flag.touch()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert source == HOST
    assert (message.format, message.facility_name, message.severity_name) == ("rfc3164", "daemon", "err")
    assert (message.app_name, message.hostname) == ("bbtag", None)  # busybox sends no hostname


def test_malformed_datagrams_are_dropped_and_counted(sink: ThreadedSink) -> None:
    bad = [b"", b"<999>x", b"<13>1 not-a-time h a - - - m", b"<abc>", b"\0\0\0", b"<13>a\0b"]
    for datagram in bad:
        sink.send(datagram)
    sink.send(b"<13>1 - - app - - - still alive")
    sink.find("still alive")
    sink.wait_received(len(bad) + 1)
    stats = sink.sink.stats
    assert (stats.received, stats.malformed, stats.accepted) == (len(bad) + 1, len(bad), 1)


def test_failing_callback_is_counted_not_fatal(sink: ThreadedSink) -> None:
    sink.send(b"<13>app: EXPLODE now")
    sink.send(b"<13>app: after the explosion")
    sink.find("after the explosion")
    assert sink.sink.stats.callback_errors == 1


@pytest.fixture(scope="module")
def fuzz_sink() -> Iterator[ThreadedSink]:
    running = ThreadedSink()
    try:
        yield running
    finally:
        running.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=1500) | st.text(max_size=300).map(lambda t: ("<13>" + t).encode()), max_size=20))
def test_fuzz_running_sink(fuzz_sink: ThreadedSink, datagrams: list[bytes]) -> None:
    before = fuzz_sink.sink.stats.received
    for datagram in datagrams:
        fuzz_sink.send(datagram)
    marker = f"fuzz-marker-{os.urandom(4).hex()}"
    fuzz_sink.send(f"<13>1 - - - - - - {marker}".encode())
    fuzz_sink.find(marker)
    stats = fuzz_sink.sink.stats
    assert stats.received == before + len(datagrams) + 1  # loopback UDP: nothing lost at this rate
    assert stats.received == stats.accepted + stats.malformed
