"""TFTP wire codec (RFC 1350) with option extensions (RFC 2347/2348/2349/7440).

Pure functions and frozen dataclasses only, so the boot server, tests and tools share one
byte-exact definition of the protocol without pulling in sockets or asyncio.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "DEFAULT_BLKSIZE",
    "TIMEOUT_MAX",
    "TIMEOUT_MIN",
    "WINDOWSIZE_MAX",
    "WINDOWSIZE_MIN",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Negotiated",
    "Opcode",
    "OptionAck",
    "Packet",
    "ReadRequest",
    "TftpDecodeError",
    "WriteRequest",
    "decode",
    "encode",
    "negotiate_read",
    "parse_blksize",
    "parse_timeout",
    "parse_tsize",
    "parse_windowsize",
]

DEFAULT_BLKSIZE = 512
BLKSIZE_MIN, BLKSIZE_MAX = 8, 65464  # RFC 2348
TIMEOUT_MIN, TIMEOUT_MAX = 1, 255  # RFC 2349
WINDOWSIZE_MIN, WINDOWSIZE_MAX = 1, 65535  # RFC 7440

# Option values are decimal ASCII; the length cap keeps int() cheap on hostile input.
_DECIMAL = re.compile(r"[0-9]{1,20}")


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347: the client declines the server's OACK


class TftpDecodeError(ValueError):
    """A datagram is not a well-formed TFTP packet; `reason` says why, for debug logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ReadRequest:
    filename: str
    mode: str = "octet"
    # Names are lower-cased on decode (RFC 2347 says case-insensitive); insertion order is wire order.
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteRequest:
    filename: str
    mode: str = "octet"
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    block: int
    data: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    message: str = ""


@dataclass(frozen=True)
class OptionAck:
    options: dict[str, str]


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise TftpDecodeError(f"non-ASCII {what}") from None


def _split_fields(body: bytes, what: str) -> list[bytes]:
    """Split NUL-terminated fields; the final field must be terminated too."""
    if not body.endswith(b"\0"):
        raise TftpDecodeError(f"{what}: missing NUL terminator")
    return body[:-1].split(b"\0")


def _decode_options(raw: list[bytes], what: str) -> dict[str, str]:
    if len(raw) % 2:
        raise TftpDecodeError(f"{what}: odd option list (name without value)")
    options: dict[str, str] = {}
    for i in range(0, len(raw), 2):
        name = _ascii(raw[i], "option name").lower()
        if not name:
            raise TftpDecodeError(f"{what}: empty option name")
        # First occurrence wins: a repeated option must not let a client re-steer a negotiated value.
        options.setdefault(name, _ascii(raw[i + 1], "option value"))
    return options


def _decode_request(opcode: Opcode, body: bytes) -> Packet:
    what = opcode.name
    fields = _split_fields(body, what)
    if len(fields) < 2:
        raise TftpDecodeError(f"{what}: missing mode")
    filename = _ascii(fields[0], "filename")
    if not filename:
        raise TftpDecodeError(f"{what}: empty filename")
    mode = _ascii(fields[1], "mode").lower()
    if not mode:
        raise TftpDecodeError(f"{what}: empty mode")
    options = _decode_options(fields[2:], what)
    if opcode is Opcode.RRQ:
        return ReadRequest(filename, mode, options)
    return WriteRequest(filename, mode, options)


def decode(data: bytes) -> Packet:
    """Parse one datagram; raise TftpDecodeError (never anything else) if it is malformed."""
    if len(data) < 2:
        raise TftpDecodeError("truncated: no opcode")
    (raw_opcode,) = struct.unpack_from("!H", data)
    try:
        opcode = Opcode(raw_opcode)
    except ValueError:
        raise TftpDecodeError(f"unknown opcode {raw_opcode}") from None
    body = data[2:]
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(opcode, body)
    if opcode is Opcode.DATA:
        if len(body) < 2:
            raise TftpDecodeError("DATA: truncated block number")
        return Data(struct.unpack_from("!H", body)[0], bytes(body[2:]))
    if opcode is Opcode.ACK:
        if len(body) != 2:
            raise TftpDecodeError(f"ACK: expected 4 bytes, got {len(data)}")
        return Ack(struct.unpack_from("!H", body)[0])
    if opcode is Opcode.ERROR:
        if len(body) < 2:
            raise TftpDecodeError("ERROR: truncated error code")
        (raw_code,) = struct.unpack_from("!H", body)
        try:
            code = ErrorCode(raw_code)
        except ValueError:
            raise TftpDecodeError(f"ERROR: unknown error code {raw_code}") from None
        fields = _split_fields(body[2:], "ERROR")
        if len(fields) != 1:
            raise TftpDecodeError("ERROR: data after message terminator")
        # The message is only for humans: keep it readable rather than rejecting the packet, and ASCII
        # ("?" for other bytes) so that what we decoded can be encoded again.
        return Error(code, fields[0].decode("ascii", errors="replace").replace("\ufffd", "?"))
    # OACK
    options = _decode_options(_split_fields(body, "OACK"), "OACK")
    if not options:
        raise TftpDecodeError("OACK: no options")
    return OptionAck(options)


def _field(text: str, what: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be ASCII: {text!r}") from None
    if b"\0" in raw:
        raise ValueError(f"{what} must not contain NUL: {text!r}")
    return raw + b"\0"


def _block(block: int) -> bytes:
    if not 0 <= block <= 0xFFFF:
        raise ValueError(f"block number out of range: {block}")
    return struct.pack("!H", block)


def _options(options: Mapping[str, str]) -> bytes:
    return b"".join(_field(k, "option name") + _field(v, "option value") for k, v in options.items())


def encode(packet: Packet) -> bytes:
    """Serialise a packet; raise ValueError for values the wire format cannot carry."""
    match packet:
        case ReadRequest() | WriteRequest():
            op = Opcode.RRQ if isinstance(packet, ReadRequest) else Opcode.WRQ
            if not packet.filename:
                raise ValueError("filename must not be empty")
            return (
                struct.pack("!H", op)
                + _field(packet.filename, "filename")
                + _field(packet.mode, "mode")
                + _options(packet.options)
            )
        case Data(block=block, data=data):
            return struct.pack("!H", Opcode.DATA) + _block(block) + data
        case Ack(block=block):
            return struct.pack("!H", Opcode.ACK) + _block(block)
        case Error(code=code, message=message):
            return struct.pack("!HH", Opcode.ERROR, ErrorCode(code)) + _field(message, "message")
        case OptionAck(options=options):
            if not options:
                raise ValueError("OACK needs at least one option")
            return struct.pack("!H", Opcode.OACK) + _options(options)
    raise TypeError(f"not a TFTP packet: {packet!r}")


def _parse_int(value: str, low: int, high: int | None) -> int | None:
    if not _DECIMAL.fullmatch(value):
        return None
    number = int(value)
    if number < low or (high is not None and number > high):
        return None
    return number


def parse_blksize(value: str) -> int | None:
    """RFC 2348 block size in 8..65464, or None (the option is then ignored, not refused)."""
    return _parse_int(value, BLKSIZE_MIN, BLKSIZE_MAX)


def parse_tsize(value: str) -> int | None:
    """RFC 2349 transfer size: any non-negative integer (clients send 0 in an RRQ)."""
    return _parse_int(value, 0, None)


def parse_timeout(value: str) -> int | None:
    """RFC 2349 retransmission timeout: whole seconds in 1..255."""
    return _parse_int(value, TIMEOUT_MIN, TIMEOUT_MAX)


def parse_windowsize(value: str) -> int | None:
    """RFC 7440 window size: blocks per ACK in 1..65535."""
    return _parse_int(value, WINDOWSIZE_MIN, WINDOWSIZE_MAX)


@dataclass(frozen=True)
class Negotiated:
    """The transfer parameters both sides agreed on (defaults when an option was not accepted)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: int | None = None


def negotiate_read(
    requested: Mapping[str, str], *, file_size: int | None, max_blksize: int, max_windowsize: int
) -> tuple[dict[str, str], Negotiated]:
    """Pick the OACK for an RRQ: only options the client asked for and we accept, in its order.

    blksize and windowsize may be answered lower than asked (the RFCs allow it); timeout is echoed
    because the server must use the client's value; tsize is answered with `file_size` when known.
    Unknown and out-of-range options are left out, which per RFC 2347 means "not accepted".
    """
    answer: dict[str, str] = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    for name, value in requested.items():
        name = name.lower()
        if name == "blksize" and (asked := parse_blksize(value)) is not None:
            blksize = min(asked, max_blksize)
            answer[name] = str(blksize)
        elif name == "windowsize" and (asked := parse_windowsize(value)) is not None:
            windowsize = min(asked, max_windowsize)
            answer[name] = str(windowsize)
        elif name == "timeout" and (asked := parse_timeout(value)) is not None:
            timeout = asked
            answer[name] = str(timeout)
        elif name == "tsize" and file_size is not None and parse_tsize(value) is not None:
            answer[name] = str(file_size)
    return answer, Negotiated(blksize, windowsize, timeout)
