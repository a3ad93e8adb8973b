"""Syslog message codec: RFC 5424 strictly, RFC 3164 ("BSD syslog") leniently.

Machines being installed log over UDP in whatever dialect their firmware, installer or
init system speaks. RFC 5424 has a grammar, so a datagram that claims version 1 and breaks it
is rejected. RFC 3164 only describes common practice, so its parser accepts the real-world
variants (missing PRI -> PRI 13, missing hostname, Cisco-style year, ISO timestamps, no tag)
and rejects only what cannot be syslog at all: empty datagrams, malformed PRI, NUL bytes.

Pure functions and frozen dataclasses: no sockets, no clock reads unless the caller omits ``now``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

__all__ = [
    "FACILITY_NAMES",
    "SEVERITY_NAMES",
    "SyslogDecodeError",
    "SyslogMessage",
    "decode",
    "encode_rfc3164",
    "encode_rfc5424",
]

Format = Literal["rfc5424", "rfc3164"]

FACILITY_NAMES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
)  # fmt: skip
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

DEFAULT_PRI = 13  # RFC 3164 4.3.3: user.notice for a message without a PRI
_MAX_PRI = 191
_BOM = b"\xef\xbb\xbf"
_NIL = "-"
_MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}

# RFC 5424 6.2.3 TIMESTAMP (RFC 3339 with at most 6 fraction digits, upper-case T and Z).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})"
)  # fmt: skip
# Lenient variant for BSD senders (rsyslog's legacy template with RFC 3339 dates, lower-case t/z,
# more fraction digits).
_ISO_LENIENT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:?\d{2})? "
)  # fmt: skip
# "Mmm dd hh:mm:ss" with a space- or zero-padded day; Cisco adds a year and milliseconds.
_BSD_TIME = re.compile(
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(\d{1,2})(?: (\d{4}))?"
    r" (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?:? "
)
_TAG = re.compile(r"([^\s\[\]:]{1,48})(?:\[([^\]\s]{1,128})\])?: ?")
_PRINTUSASCII = re.compile(r"[\x21-\x7e]+")
_SD_NAME = re.compile(r"[\x21-\x7e]{1,32}")


class SyslogDecodeError(ValueError):
    """The datagram is not a syslog message; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SyslogMessage:
    """One decoded message. Fields the sender left out (or sent as NILVALUE) are None.

    ``timestamp`` is timezone-aware when the sender said which zone (RFC 5424 always does);
    a BSD timestamp has no zone and no year, so it is naive (the sender's local time) with the
    year that puts it nearest before the receiver's ``now``.
    """

    facility: int
    severity: int
    format: Format
    timestamp: datetime | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    structured_data: str | None
    message: str

    @property
    def pri(self) -> int:
        return self.facility * 8 + self.severity

    @property
    def facility_name(self) -> str:
        return FACILITY_NAMES[self.facility]

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES[self.severity]


def decode(data: bytes, now: datetime | None = None) -> SyslogMessage:
    """Decode one UDP datagram. ``now`` (naive local time) only places yearless BSD timestamps."""
    body = data.rstrip(b"\r\n\0")
    if not body.strip():
        raise SyslogDecodeError("empty datagram")
    if b"\0" in body:
        raise SyslogDecodeError("NUL byte inside the message")
    pri, rest = _split_pri(body)
    if pri is not None and re.match(rb"[1-9]\d? ", rest):
        version, _, after = rest.partition(b" ")
        if version != b"1":
            raise SyslogDecodeError(f"unsupported RFC 5424 version {version.decode()}")
        return _decode_5424(pri, after)
    return _decode_3164(DEFAULT_PRI if pri is None else pri, rest, now)


def _split_pri(body: bytes) -> tuple[int | None, bytes]:
    if not body.startswith(b"<"):
        return None, body
    end = body.find(b">", 1, 6)
    if end < 0:
        raise SyslogDecodeError("PRI not closed with '>' within 3 digits")
    digits = body[1:end]
    if not digits.isdigit() or not digits.isascii():
        raise SyslogDecodeError(f"PRI is not a number: {digits[:5]!r}")
    value = int(digits)
    if value > _MAX_PRI:
        raise SyslogDecodeError(f"PRI {value} out of range 0..{_MAX_PRI}")
    return value, body[end + 1 :]


def _text(data: bytes) -> str:
    """UTF-8 where valid (the BOM dropped), else Latin-1: old devices send 8-bit text."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ----------------------------------------------------------------------------- RFC 5424


def _decode_5424(pri: int, rest: bytes) -> SyslogMessage:
    # HEADER fields are ASCII and single-space separated; the MSG after them is free-form.
    fields = rest.split(b" ", 5)
    if len(fields) < 6:
        raise SyslogDecodeError("RFC 5424 header needs TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA")
    raw_time, raw_host, raw_app, raw_proc, raw_msgid, tail = fields
    timestamp = _rfc3339(_ascii(raw_time, "TIMESTAMP"))
    hostname = _header_field(raw_host, "HOSTNAME", 255)
    app_name = _header_field(raw_app, "APP-NAME", 48)
    procid = _header_field(raw_proc, "PROCID", 128)
    msgid = _header_field(raw_msgid, "MSGID", 32)
    sd_end = _structured_data_end(tail)
    try:
        structured = tail[:sd_end].decode("utf-8") if tail[:sd_end] != b"-" else None
    except UnicodeDecodeError:
        raise SyslogDecodeError("STRUCTURED-DATA is not UTF-8") from None
    after = tail[sd_end:]
    if after and not after.startswith(b" "):
        raise SyslogDecodeError("STRUCTURED-DATA must be followed by a space or the end")
    return SyslogMessage(
        facility=pri >> 3,
        severity=pri & 7,
        format="rfc5424",
        timestamp=timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msgid=msgid,
        structured_data=structured,
        message=_text(after[1:]),
    )


def _ascii(raw: bytes, name: str) -> str:
    if not raw:
        raise SyslogDecodeError(f"empty {name} (two spaces in the header?)")
    if not _PRINTUSASCII.fullmatch(raw.decode("latin-1")):
        raise SyslogDecodeError(f"{name} has characters outside printable ASCII")
    return raw.decode("ascii")


def _header_field(raw: bytes, name: str, limit: int) -> str | None:
    text = _ascii(raw, name)
    if len(text) > limit:
        raise SyslogDecodeError(f"{name} longer than {limit} characters")
    return None if text == _NIL else text


def _rfc3339(text: str) -> datetime | None:
    if text == _NIL:
        return None
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise SyslogDecodeError(f"TIMESTAMP is not RFC 3339: {text[:40]!r}")
    return _datetime_from(match.groups())


def _datetime_from(groups: tuple[str | None, ...]) -> datetime:
    year, month, day, hour, minute, second, fraction, zone = groups
    assert year and month and day and hour and minute and second
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz: timezone | None = None
    if zone is not None:
        if zone in ("Z", "z"):
            tz = UTC
        else:
            sign = -1 if zone[0] == "-" else 1
            hh, mm = int(zone[1:3]), int(zone[-2:])
            if hh > 23 or mm > 59:
                raise SyslogDecodeError(f"bad time zone offset {zone}")
            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
    except ValueError as exc:
        raise SyslogDecodeError(f"impossible date or time: {exc}") from None


def _structured_data_end(tail: bytes) -> int:
    """Index just past STRUCTURED-DATA (NILVALUE or SD-ELEMENTs), checking the grammar."""
    if tail.startswith(b"-"):
        return 1
    if not tail.startswith(b"["):
        raise SyslogDecodeError("STRUCTURED-DATA must be '-' or start with '['")
    i, n = 0, len(tail)
    while i < n and tail[i : i + 1] == b"[":
        i = _sd_element_end(tail, i + 1)
    return i


def _sd_element_end(tail: bytes, i: int) -> int:
    n = len(tail)
    i = _sd_name_end(tail, i, "SD-ID")
    while True:
        if i >= n:
            raise SyslogDecodeError("SD-ELEMENT not closed with ']'")
        ch = tail[i : i + 1]
        if ch == b"]":
            return i + 1
        if ch != b" ":
            raise SyslogDecodeError("SD-PARAMs must be separated by one space")
        i = _sd_name_end(tail, i + 1, "PARAM-NAME")
        if tail[i : i + 2] != b'="':
            raise SyslogDecodeError('SD-PARAM needs ="value"')
        i += 2
        while True:  # PARAM-VALUE: UTF-8, with '"', '\' and ']' escaped by '\'
            if i >= n:
                raise SyslogDecodeError("PARAM-VALUE not closed with '\"'")
            ch = tail[i : i + 1]
            if ch == b"\\":
                i += 2
            elif ch == b'"':
                i += 1
                break
            elif ch == b"]":
                raise SyslogDecodeError("unescaped ']' in PARAM-VALUE")
            else:
                i += 1


def _sd_name_end(tail: bytes, i: int, what: str) -> int:
    start = i
    while i < len(tail) and 0x21 <= tail[i] <= 0x7E and tail[i] not in b'= ]"':
        i += 1
    if i == start or i - start > 32:
        raise SyslogDecodeError(f"{what} must be 1..32 printable ASCII characters except '= ]\"'")
    return i


# ----------------------------------------------------------------------------- RFC 3164


def _decode_3164(pri: int, rest: bytes, now: datetime | None) -> SyslogMessage:
    text = _text(rest)
    timestamp: datetime | None = None
    hostname: str | None = None
    bsd = _BSD_TIME.match(text)
    iso = None if bsd else _ISO_LENIENT.match(text)
    if bsd is not None:
        timestamp = _bsd_datetime(bsd.groups(), now)
        text = text[bsd.end() :]
    elif iso is not None:
        groups = iso.groups()
        zone = groups[7]
        if zone is not None and zone not in ("Z", "z") and ":" not in zone:
            groups = (*groups[:7], f"{zone[:3]}:{zone[3:]}")
        timestamp = _datetime_from(groups)
        text = text[iso.end() :]
    if timestamp is not None:
        # A hostname follows the timestamp unless the sender skipped it and went on to the tag.
        word, sep, after = text.partition(" ")
        if sep and word and not word.endswith(":") and "[" not in word and _PRINTUSASCII.fullmatch(word):
            hostname, text = word, after
    app_name = procid = None
    tag = _TAG.match(text)
    if tag is not None:
        app_name, procid = tag.group(1), tag.group(2)
        text = text[tag.end() :]
    return SyslogMessage(
        facility=pri >> 3,
        severity=pri & 7,
        format="rfc3164",
        timestamp=timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msgid=None,
        structured_data=None,
        message=text,
    )


def _bsd_datetime(groups: tuple[str | None, ...], now: datetime | None) -> datetime:
    month_name, day, year, hour, minute, second, fraction = groups
    assert month_name and day and hour and minute and second
    micro = int((fraction or "0").ljust(6, "0"))
    month = _MONTHS[month_name]
    reference = (now or datetime.now()).replace(tzinfo=None)
    years = [int(year)] if year else [reference.year + 1, reference.year, reference.year - 1]
    candidates = []
    for y in years:
        try:
            candidates.append(datetime(y, month, int(day), int(hour), int(minute), int(second), micro))
        except ValueError:  # Feb 29 in a non-leap year, Apr 31, 25:00:00 ...
            continue
    if not candidates:
        raise SyslogDecodeError(f"impossible date or time: {month_name} {day} {hour}:{minute}:{second}")
    if year:
        return candidates[0]
    # The sender's clock may run a little ahead of ours; otherwise the message is from the past.
    slack = reference + timedelta(days=1)
    past = [c for c in candidates if c <= slack]
    return max(past) if past else min(candidates)


# ----------------------------------------------------------------------------- encoders


def encode_rfc5424(message: SyslogMessage, bom: bool = True) -> bytes:
    """The RFC 5424 form of ``message`` (timestamps must be timezone-aware)."""
    stamp = _NIL
    if message.timestamp is not None:
        if message.timestamp.tzinfo is None:
            raise ValueError("RFC 5424 timestamps need a time zone")
        stamp = message.timestamp.isoformat().replace("+00:00", "Z")
    header = " ".join(
        [
            f"<{message.pri}>1",
            stamp,
            message.hostname or _NIL,
            message.app_name or _NIL,
            message.procid or _NIL,
            message.msgid or _NIL,
            message.structured_data or _NIL,
        ]
    )
    payload = message.message.encode("utf-8")
    head = header.encode("utf-8")  # ASCII except PARAM-VALUEs, which are UTF-8
    if not payload:
        return head
    return head + b" " + (_BOM if bom else b"") + payload


def encode_rfc3164(message: SyslogMessage) -> bytes:
    """The classic BSD form: ``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`` (fields left out when None)."""
    parts = [f"<{message.pri}>"]
    if message.timestamp is not None:
        ts = message.timestamp
        month = next(name for name, number in _MONTHS.items() if number == ts.month)
        parts.append(f"{month} {ts.day:2d} {ts:%H:%M:%S} ")
        if message.hostname:
            parts.append(message.hostname + " ")
    if message.app_name:
        parts.append(message.app_name + (f"[{message.procid}]" if message.procid else "") + ": ")
    parts.append(message.message)
    return "".join(parts).encode("utf-8")
