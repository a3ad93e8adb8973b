"""The TFTP codec is byte-exact, round-trips, and fails only with TftpDecodeError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bramble.proto.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Negotiated,
    OptionAck,
    Packet,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
    negotiate_read,
    parse_blksize,
    parse_timeout,
    parse_tsize,
    parse_windowsize,
)

EXACT: list[tuple[Packet, bytes]] = [
    (ReadRequest("pxelinux.0", "octet"), b"\x00\x01pxelinux.0\x00octet\x00"),
    (
        ReadRequest("boot/vmlinuz", "octet", {"blksize": "1468", "tsize": "0"}),
        b"\x00\x01boot/vmlinuz\x00octet\x00blksize\x001468\x00tsize\x000\x00",
    ),
    (WriteRequest("up.bin", "netascii"), b"\x00\x02up.bin\x00netascii\x00"),
    (Data(1, b"hello"), b"\x00\x03\x00\x01hello"),
    (Data(0xFFFF, b""), b"\x00\x03\xff\xff"),
    (Ack(0), b"\x00\x04\x00\x00"),
    (Ack(65535), b"\x00\x04\xff\xff"),
    (Error(ErrorCode.FILE_NOT_FOUND, "nope"), b"\x00\x05\x00\x01nope\x00"),
    (Error(ErrorCode.OPTION_REFUSED, ""), b"\x00\x05\x00\x08\x00"),
    (OptionAck({"blksize": "512", "windowsize": "4"}), b"\x00\x06blksize\x00512\x00windowsize\x004\x00"),
]


@pytest.mark.parametrize(("packet", "wire"), EXACT)
def test_encode_and_decode_are_byte_exact(packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire
    assert decode(wire) == packet


def test_request_option_names_and_mode_are_case_insensitive_and_ordered() -> None:
    packet = decode(b"\x00\x01f\x00OCTET\x00TSize\x000\x00BlkSize\x00512\x00")
    assert packet == ReadRequest("f", "octet", {"tsize": "0", "blksize": "512"})
    assert isinstance(packet, ReadRequest)
    assert list(packet.options) == ["tsize", "blksize"]


def test_repeated_option_keeps_the_first_value() -> None:
    packet = decode(b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x009000\x00")
    assert isinstance(packet, ReadRequest)
    assert packet.options == {"blksize": "512"}


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "truncated"),
        (b"\x00", "truncated"),
        (b"\x00\x09xx", "unknown opcode"),
        (b"\x00\x00", "unknown opcode"),
        (b"\x00\x01file\x00octet", "missing NUL"),
        (b"\x00\x01file", "missing NUL"),
        (b"\x00\x01file\x00", "missing mode"),
        (b"\x00\x01\x00octet\x00", "empty filename"),
        (b"\x00\x01f\xc3\xa9\x00octet\x00", "non-ASCII filename"),
        (b"\x00\x01f\x00octet\x00blksize\x00", "odd option list"),
        (b"\x00\x01f\x00octet\x00\x00512\x00", "empty option name"),
        (b"\x00\x03\x00", "truncated block"),
        (b"\x00\x04\x00", "expected 4 bytes"),
        (b"\x00\x04\x00\x01\x00", "expected 4 bytes"),
        (b"\x00\x05\x00", "truncated error code"),
        (b"\x00\x05\x00\x09x\x00", "unknown error code"),
        (b"\x00\x05\x00\x01msg", "missing NUL"),
        (b"\x00\x05\x00\x01msg\x00more\x00", "after message"),
        (b"\x00\x06", "missing NUL"),
        (b"\x00\x06\x00", "odd option list"),
    ],
)
def test_malformed_packets_raise_decode_error_with_reason(wire: bytes, reason: str) -> None:
    with pytest.raises(TftpDecodeError) as info:
        decode(wire)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_error_message_with_non_ascii_is_kept_readable() -> None:
    packet = decode(b"\x00\x05\x00\x00caf\xc3\xa9\x00")
    assert isinstance(packet, Error)
    assert packet.code is ErrorCode.NOT_DEFINED
    assert packet.message == "caf??"  # ASCII, so what was decoded encodes again (found by atheris)
    assert decode(encode(packet)) == packet


@pytest.mark.parametrize(
    "packet",
    [
        Data(65536, b""),
        Ack(-1),
        ReadRequest("", "octet"),
        ReadRequest("caf\u00e9", "octet"),
        ReadRequest("a\0b", "octet"),
        OptionAck({}),
    ],
)
def test_encode_rejects_what_the_wire_cannot_carry(packet: Packet) -> None:
    with pytest.raises(ValueError):
        encode(packet)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        packet = decode(data)
    except TftpDecodeError:
        return
    # Anything accepted re-encodes (names lower-cased, so compare decoded forms).
    assert decode(encode(packet)) == packet


_ascii_text = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=40)
_options = st.dictionaries(_ascii_text.map(str.lower), st.text(st.characters(min_codepoint=1, max_codepoint=127)))


@given(
    st.one_of(
        st.builds(ReadRequest, _ascii_text, _ascii_text.map(str.lower), _options),
        st.builds(WriteRequest, _ascii_text, _ascii_text.map(str.lower), _options),
        st.builds(Data, st.integers(0, 0xFFFF), st.binary(max_size=1468)),
        st.builds(Ack, st.integers(0, 0xFFFF)),
        st.builds(Error, st.sampled_from(ErrorCode), st.text(st.characters(min_codepoint=1, max_codepoint=127))),
        st.builds(OptionAck, _options.filter(bool)),
    )
)
def test_round_trip(packet: Packet) -> None:
    assert decode(encode(packet)) == packet


@pytest.mark.parametrize(
    ("value", "blksize", "timeout", "windowsize", "tsize"),
    [
        ("0", None, None, None, 0),
        ("1", None, 1, 1, 1),
        ("7", None, 7, 7, 7),
        ("8", 8, 8, 8, 8),
        ("255", 255, 255, 255, 255),
        ("256", 256, None, 256, 256),
        ("65464", 65464, None, 65464, 65464),
        ("65465", None, None, 65465, 65465),
        ("65535", None, None, 65535, 65535),
        ("65536", None, None, None, 65536),
        ("-1", None, None, None, None),
        ("1.5", None, None, None, None),
        ("", None, None, None, None),
        (" 8", None, None, None, None),
        ("\u0661\u0662", None, None, None, None),  # non-ASCII digits are not decimal on the wire
    ],
)
def test_option_ranges(value: str, blksize: int, timeout: int, windowsize: int, tsize: int) -> None:
    assert parse_blksize(value) == blksize
    assert parse_timeout(value) == timeout
    assert parse_windowsize(value) == windowsize
    assert parse_tsize(value) == tsize


def test_negotiation_answers_only_accepted_options_in_client_order() -> None:
    answer, params = negotiate_read(
        {"tsize": "0", "windowsize": "100", "foo": "bar", "blksize": "65464", "timeout": "3"},
        file_size=1234,
        max_blksize=1468,
        max_windowsize=64,
    )
    assert list(answer.items()) == [("tsize", "1234"), ("windowsize", "64"), ("blksize", "1468"), ("timeout", "3")]
    assert params == Negotiated(blksize=1468, windowsize=64, timeout=3)


def test_negotiation_ignores_out_of_range_values_and_unknown_size() -> None:
    answer, params = negotiate_read(
        {"blksize": "4", "timeout": "0", "windowsize": "0", "tsize": "x"},
        file_size=10,
        max_blksize=1468,
        max_windowsize=64,
    )
    assert answer == {}
    assert params == Negotiated()
    answer, _ = negotiate_read({"tsize": "0"}, file_size=None, max_blksize=1468, max_windowsize=64)
    assert answer == {}
