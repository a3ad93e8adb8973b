"""The audit writer process: boot traffic's audit records paired, formatted and written on another core.

Every DHCP packet, TFTP/HTTP transfer and syslog line is an audit event. At thousands of DHCP packets a
second that work (pairing OFFERs with REQUESTs, formatting, SQLite's index updates, and the garbage
collector walking the queued rows) took 40-70 us of the 210-240 us of CPU a DHCP exchange cost the
daemon, all in its one event loop under one GIL. So brambled hands each packet's facts, batched,
through a pipe to this process, which does the pairing (``bramble.boot.exchanges``) and the batched,
storm-aware writes (``bramble.core.observations``); the packet path only appends a tuple.

Parent side, ``AuditWriterProcess``: starts the child and waits until it has opened the database,
sends a frame every ``send_seconds`` (or at once when ``frame_records`` are waiting), starts another
child if it dies (the new one records that in the audit log), drops and counts what it cannot send
while the child is far behind (recorded as a gap), and at stop sends the rest and waits for the child
to write it.

Child side, ``python -m bramble.auditd``: reads its settings from the first frame on stdin (a database
URL may hold a password: not on the command line), prints ``ready``, and writes until stdin ends.
It ignores SIGINT and SIGTERM: a Ctrl-C or systemd's stop reaches the whole process group, and the
daemon, which decides when the writer stops, still has records to send it. The end of stdin, which
also comes when the daemon dies, makes it write everything it holds, then exit.

Frames: a 4-byte big-endian length, then a pickle of a list of tuples of plain values. The child's
unpickler refuses every class, so a frame can only ever carry data.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import io
import json
import logging
import os
import pickle
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bramble.boot.dhcp import DhcpEvent
from bramble.boot.exchanges import BootObservation, DhcpExchanges
from bramble.config import Settings
from bramble.core.observations import Observation, ObservationLog
from bramble.db.models import utcnow
from bramble.db.session import Database

log = logging.getLogger("bramble.auditd")

_FRAME = struct.Struct("!II")  # body length, records in it
_MAX_FRAME = 256 << 20  # a length past this means the stream is corrupt, not a big frame
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ on Linux only
_PIPE_BYTES = 1 << 20  # the default maximum an unprivileged process may ask for; root may get more
_GC_THRESHOLDS = (50_000, 20, 20)
_TICK_SECONDS = 0.2  # how often the child looks at its held frames (the daemon's flush period)
_HELD_ROW_BYTES = 1300  # what one observation held in the daemon's own queue costs: the unit of the budgets
_TRICKLE_RECORDS = 1000  # records decoded per tick while a long storm lasts

# Record kinds, the first item of each tuple in a frame.
_DHCP = 0  # (kind, interface, target, DhcpEvent fields, wall-clock time)
_SEEN = 1  # (kind, action, target, message, outcome, details, wall-clock time)
_LOST = 2  # (kind, count, wall-clock time of the first): records the parent could not send
_NOTICE = 3  # (kind, action, message, wall-clock time): the writer's own trouble, for the audit log


class AuditWriterError(Exception):
    """The writer process could not be started (the message says why, for the operator)."""


@dataclass(frozen=True)
class WriterConfig:
    """What the child needs: where to write, as whom, and the storm hold of ``[audit]``."""

    database_url: str
    actor: str
    log_level: str = "info"
    max_queued: int = 50_000
    storm_rate: float = 500.0
    storm_backlog: int = 20_000
    storm_delay_seconds: float = 10.0
    niceness: int = 19

    @classmethod
    def from_settings(cls, settings: Settings, actor: str) -> WriterConfig:
        audit = settings.audit
        return cls(
            database_url=settings.effective_database_url,
            actor=actor,
            log_level=settings.log_level,
            max_queued=audit.observations_max_queued,
            storm_rate=audit.storm_observations_per_second,
            storm_backlog=audit.storm_hold_rows,
            storm_delay_seconds=audit.storm_hold_seconds,
            niceness=audit.writer_niceness,
        )


def can_run_apart(database_url: str) -> bool:
    """An in-memory SQLite database lives in the daemon alone: another process cannot write to it."""
    return not (database_url.startswith("sqlite") and (":memory:" in database_url or database_url.endswith("://")))


def as_observation(actor: str, seen: BootObservation) -> Observation:
    """A boot interaction as the audit log's batched writer takes it (its time: now, if it has none)."""
    return Observation(
        actor,
        seen.action,
        seen.target,
        seen.message,
        seen.outcome,
        seen.details or None,
        seen.time or utcnow(),
        seen.render,
    )


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """Details as the audit log stores them (JSON), so a frame carries only plain values."""
    return json.loads(json.dumps(details, default=str)) if details else {}


# ---------------------------------------------------------------------------------------------- parent
class AuditWriterProcess:
    """brambled's end of the pipe (see the module)."""

    def __init__(
        self,
        config: WriterConfig,
        *,
        send_seconds: float = 0.02,
        frame_records: int = 256,
        max_behind_bytes: int = 32 << 20,
        max_waiting_records: int = 200_000,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        self._config = config
        self._send_seconds = send_seconds
        self._frame_records = frame_records
        self._max_behind_bytes = max_behind_bytes  # unsent bytes in the pipe's buffer: the child is behind
        self._max_waiting = max_waiting_records  # records kept while there is no child (restarting)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._python = python
        self._proc: asyncio.subprocess.Process | None = None
        self._records: list[tuple[Any, ...]] = []
        self._lost = 0
        self._lost_since = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.stats = {"sent": 0, "frames": 0, "lost": 0, "restarts": 0}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        self._proc = await self._spawn()
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="auditd-send"),
            asyncio.create_task(self._supervise(), name="auditd-supervise"),
        ]

    # ----------------------------------------------------------------- the packet path's calls
    def dhcp_packet(self, interface: str, target: str, event: DhcpEvent, at: float) -> None:
        """``bramble.boot.role.DhcpPacketSink``: never blocks, never raises."""
        records = self._records
        records.append((_DHCP, interface, target, tuple(event), at))
        if len(records) >= self._frame_records:
            self._send()

    def observe(self, seen: BootObservation) -> None:
        """Any other boot interaction (TFTP, HTTP, syslog, wake, discovery)."""
        seen.realize()
        at = seen.time.timestamp() if seen.time is not None else time.time()
        self._records.append((_SEEN, seen.action, seen.target, seen.message, seen.outcome, _plain(seen.details), at))
        if len(self._records) >= self._frame_records:
            self._send()

    # ----------------------------------------------------------------- sending
    def _send(self, *, at_stop: bool = False) -> None:
        """One frame of what is waiting. At stop, also when the child is behind: it is waited for."""
        records = self._records
        if not records and not (at_stop and self._lost):
            return
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None or proc.stdin.is_closing():
            if len(records) > self._max_waiting:  # no child for a long while: keep the newest
                self._count_lost(records[: len(records) - self._max_waiting])
                del records[: len(records) - self._max_waiting]
            return
        self._records = []
        transport = proc.stdin.transport
        if not at_stop and transport.get_write_buffer_size() > self._max_behind_bytes:
            self._count_lost(records)
            return
        if self._lost:
            records.append((_LOST, self._lost, self._lost_since))
            self._lost = 0
        data = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.write(_FRAME.pack(len(data), len(records)) + data)
        self.stats["sent"] += len(records)
        self.stats["frames"] += 1

    def _count_lost(self, records: list[tuple[Any, ...]]) -> None:
        if not self._lost:
            self._lost_since = records[0][-1] if records else time.time()
        self._lost += len(records)
        self.stats["lost"] += len(records)
        if self.stats["lost"] == len(records) or self.stats["lost"] % 100_000 < len(records):
            log.warning("audit writer is behind: %d records not sent so far", self.stats["lost"])

    async def _send_loop(self) -> None:
        while True:
            await asyncio.sleep(self._send_seconds)
            try:
                self._send()
            except Exception:  # a broken pipe: the supervisor starts another child
                log.exception("could not send records to the audit writer")

    # ----------------------------------------------------------------- the child's life
    async def _spawn(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "bramble.auditd",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            pipe = proc.stdin.transport.get_extra_info("pipe")
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)  # room for a burst while it writes
            settings = json.dumps(asdict(self._config)).encode()
            proc.stdin.write(_FRAME.pack(len(settings), 0) + settings)
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), self._start_timeout)
            except TimeoutError:
                raise AuditWriterError(f"the audit writer was not ready within {self._start_timeout:.0f} s") from None
            if line != b"ready\n":
                code = await proc.wait()
                raise AuditWriterError(f"the audit writer exited with code {code} before it was ready (see its log)")
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        log.info("audit writer process %d writing boot traffic to the audit log", proc.pid)
        return proc

    async def _supervise(self) -> None:
        """Start another child when one dies; the new one records the restart in the audit log."""
        backoff = 1.0
        notice: tuple[Any, ...] | None = None
        while True:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._closing:
                    return
                self._proc = None
                self.stats["restarts"] += 1
                log.error("audit writer process %d exited with code %s; starting another", proc.pid, code)
                notice = (
                    _NOTICE,
                    "audit.writer_restarted",
                    f"the audit writer process exited with code {code}; another was started, and records "
                    "it had not written yet were lost",
                    time.time(),
                )
            await asyncio.sleep(backoff)
            try:
                self._proc = await self._spawn()
            except (AuditWriterError, OSError) as exc:
                backoff = min(backoff * 2, 60.0)
                log.error("could not start the audit writer (next try in %.0f s): %s", backoff, exc)
                continue
            backoff = 1.0
            if notice is not None:
                self._records.insert(0, notice)
                notice = None

    async def close(self) -> None:
        """Send what is left, end the child's input, and wait for it to write everything."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            if self._records:
                log.warning("%d audit records not written: no audit writer at stop", len(self._records))
            return
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        try:
            self._send(at_stop=True)
            proc.stdin.close()
            await asyncio.wait_for(proc.stdin.wait_closed(), self._stop_timeout)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        self._proc = None
        try:
            await asyncio.wait_for(proc.stdout.read(), self._stop_timeout)
            code = await asyncio.wait_for(proc.wait(), self._stop_timeout)
        except TimeoutError:
            log.error("audit writer process %d did not finish within %.0f s; killed", proc.pid, self._stop_timeout)
            proc.kill()
            code = await proc.wait()
        if code != 0:
            log.error("audit writer process %d exited with code %s", proc.pid, code)


# ---------------------------------------------------------------------------------------------- child
class _PlainUnpickler(pickle.Unpickler):
    """Frames carry tuples, strings, numbers, lists and dicts; anything naming a class is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused {module}.{name}: audit frames carry plain values only")


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _Writer:
    """The child's work: records from frames into the batched audit log."""

    def __init__(self, config: WriterConfig, observations: ObservationLog) -> None:
        self._actor = config.actor
        self._log = observations
        self._exchanges = DhcpExchanges(self._record)
        self.bad_frames = 0
        self.bad_records = 0
        self._handlers: dict[int, Callable[..., None]] = {
            _DHCP: self._dhcp,
            _SEEN: self._seen,
            _LOST: self._lost,
            _NOTICE: self._notice,
        }

    def _record(self, seen: BootObservation) -> None:
        self._log.observe(as_observation(self._actor, seen))

    def _dhcp(self, interface: str, target: str, fields: tuple[Any, ...], at: float) -> None:
        self._exchanges.packet(interface, target, DhcpEvent._make(fields), at)

    def _seen(self, action: str, target: str, message: str, outcome: str, details: dict[str, Any], at: float) -> None:
        self._record(BootObservation(action, target, message, outcome, details, _at(at)))

    def _lost(self, count: int, first: float) -> None:
        self._log.note_dropped(count, _at(first))

    def _notice(self, action: str, message: str, at: float) -> None:
        self._log.observe(Observation("bramble", action, "audit/observations", message, "failed", None, _at(at)))

    def frame(self, body: bytes) -> None:
        try:
            records = _PlainUnpickler(io.BytesIO(body)).load()
            if not isinstance(records, list):
                raise pickle.UnpicklingError(f"a frame holds a list, not {type(records).__name__}")
        except Exception as exc:
            self.bad_frames += 1
            log.error("dropped an unreadable frame of %d bytes: %s", len(body), exc)
            self._log.note_dropped(1, utcnow())
            return
        handlers = self._handlers
        for record in records:
            try:
                handlers[record[0]](*record[1:])
            except Exception:
                self.bad_records += 1
                if self.bad_records in (1, 100) or self.bad_records % 10_000 == 0:
                    log.exception("dropped a malformed audit record (%d so far)", self.bad_records)

    def release_expired(self) -> None:
        self._exchanges.release_expired()

    def release_all(self) -> None:
        self._exchanges.release(None)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, int] | None:
    """One frame's body and record count; None at the end of input."""
    try:
        header = await reader.readexactly(_FRAME.size)
    except asyncio.IncompleteReadError:
        return None
    length, records = _FRAME.unpack(header)
    if length > _MAX_FRAME:
        raise ValueError(f"frame length {length} is past {_MAX_FRAME}: the stream is corrupt")
    try:
        return await reader.readexactly(length), records
    except asyncio.IncompleteReadError as exc:
        log.error("input ended inside a frame (%d of %d bytes)", len(exc.partial), length)
        return None


class FrameHold:
    """Frames wait here, undecoded, while a storm of boot traffic lasts.

    The storm policy of ``bramble.core.observations``, applied one step earlier: above ``storm_rate``
    records a second, frames are held for up to ``hold_seconds`` or ``hold_bytes``, then one trickle of
    ``trickle_records`` is decoded per tick while the storm lasts; past ``max_bytes`` frames are dropped
    and counted. Held undecoded, a storm costs this process little more than reading the pipe, so on a
    small host its CPU stays with the DHCP server and the clients until the storm is over. A frame is
    about 50 bytes a record against 1.3 KB for a queued observation, so the same memory holds some
    25 times as many records.
    """

    def __init__(
        self,
        *,
        storm_rate: float,
        hold_seconds: float,
        hold_bytes: int,
        max_bytes: int,
        trickle_records: int = _TRICKLE_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storm_rate, self._hold_seconds = storm_rate, hold_seconds
        self._hold_bytes, self._max_bytes = hold_bytes, max_bytes
        self._trickle = trickle_records
        self._clock = clock
        self._frames: deque[tuple[float, bytes, int]] = deque()  # (arrival, body, records)
        self.held_bytes = 0
        self.arrived = 0  # records, since start
        self._counted, self._counted_at = 0, clock()
        self.stats = {"storm_holds": 0, "storm_trickles": 0, "dropped": 0}

    def add(self, body: bytes, records: int) -> bool:
        """Hold a frame; False if it was dropped (``max_bytes`` held already)."""
        self.arrived += records
        if self.held_bytes + len(body) > self._max_bytes:
            self.stats["dropped"] += records
            return False
        self._frames.append((self._clock(), body, records))
        self.held_bytes += len(body)
        return True

    def due(self) -> list[bytes]:
        """The frames to decode now (called once a tick): all of them, a trickle, or none."""
        now = self._clock()
        rate = (self.arrived - self._counted) / max(now - self._counted_at, 1e-3)
        self._counted, self._counted_at = self.arrived, now
        frames = self._frames
        if not frames:
            return []
        if rate < self._storm_rate:
            return self.take(len(frames))
        if self.held_bytes < self._hold_bytes and now - frames[0][0] < self._hold_seconds:
            self.stats["storm_holds"] += 1
            return []
        self.stats["storm_trickles"] += 1
        budget, count = self._trickle, 0
        for _, _, records in frames:
            if budget <= 0:
                break
            budget -= records
            count += 1
        return self.take(count)

    def take(self, count: int | None = None) -> list[bytes]:
        """The oldest ``count`` frames (None: all), no longer held."""
        frames = self._frames
        count = len(frames) if count is None else min(count, len(frames))
        taken = [frames.popleft()[1] for _ in range(count)]
        self.held_bytes -= sum(len(body) for body in taken)
        return taken


async def _serve(config: WriterConfig) -> int:
    db = Database.connect(config.database_url)
    # The storm hold is the FrameHold's here: rows it lets through are written at once.
    observations = ObservationLog(db, max_queued=config.max_queued, storm_rate=float("inf"))
    hold = FrameHold(
        storm_rate=config.storm_rate,
        hold_seconds=config.storm_delay_seconds,
        hold_bytes=config.storm_backlog * _HELD_ROW_BYTES,
        max_bytes=config.max_queued * _HELD_ROW_BYTES,
    )
    writer = _Writer(config, observations)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MAX_FRAME)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    try:
        async with db.read() as session:  # fail here, before "ready", if the database is unreachable
            await session.connection()
    except Exception as exc:
        log.error("cannot open the audit database: %s", exc)
        await db.dispose()
        return 2
    observations.start()
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.buffer.flush()
    code = 0

    async def decode(frames: list[bytes]) -> None:
        for body in frames:
            writer.frame(body)
            if observations.queued >= 5_000:  # written as they come, not queued by the ten thousand
                await observations.flush()

    async def tick() -> None:
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            await decode(hold.due())
            writer.release_expired()

    ticker = asyncio.create_task(tick())
    try:
        while (frame := await _read_frame(reader)) is not None:
            if not hold.add(*frame):
                observations.note_dropped(frame[1], utcnow())
    except ValueError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await decode(hold.take())
        writer.release_all()  # an exchange cut short by the stop is still recorded
        await observations.close()
        await db.dispose()
    written = {k: v for k, v in observations.stats.items() if not k.startswith("storm")}
    counts = ", ".join(f"{name} {count}" for name, count in written.items())
    held = ", ".join(f"{name} {count}" for name, count in hold.stats.items())
    log.info("audit writer stopping: %s; frames: %s, unreadable %d", counts, held, writer.bad_frames)
    return code


def _read_exactly(fd: int, size: int) -> bytes:
    """Unbuffered: the frames after the settings are read from the same descriptor by asyncio."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_settings() -> WriterConfig:
    header = _read_exactly(0, _FRAME.size)
    if len(header) != _FRAME.size:
        raise SystemExit("bramble.auditd: no settings on stdin (it is started by brambled)")
    length, _ = _FRAME.unpack(header)
    try:
        return WriterConfig(**json.loads(_read_exactly(0, length)))
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"bramble.auditd: unreadable settings: {exc}") from None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see the module: the daemon ends our input
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = _read_settings()
    if config.niceness:
        os.nice(config.niceness)
    # What is queued here (held offers, rows waiting out a storm) is acyclic and freed in whole batches; at
    # the default threshold the collector walked tens of thousands of them again every few hundred rows.
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    sys.exit(asyncio.run(_serve(config)))


if __name__ == "__main__":
    main()
