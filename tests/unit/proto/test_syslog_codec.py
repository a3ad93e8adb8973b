"""The syslog codec: RFC 5424 examples, BSD variants seen in the wild, clear errors, fuzzing."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bramble.proto.syslog import (
    SyslogDecodeError,
    SyslogMessage,
    decode,
    encode_rfc3164,
    encode_rfc5424,
)

NOW = datetime(2026, 1, 2, 3, 4, 5)  # naive local time, as the sink passes it


def test_rfc5424_example_1_with_bom() -> None:
    raw = b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed"
    msg = decode(raw, NOW)
    assert (msg.format, msg.facility, msg.severity, msg.pri) == ("rfc5424", 4, 2, 34)
    assert (msg.facility_name, msg.severity_name) == ("auth", "crit")
    assert msg.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert (msg.hostname, msg.app_name, msg.procid, msg.msgid) == ("mymachine.example.com", "su", None, "ID47")
    assert msg.structured_data is None
    assert msg.message == "'su root' failed"


def test_rfc5424_example_2_offset_and_microseconds() -> None:
    msg = decode(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time", NOW)
    assert msg.timestamp == datetime(2003, 8, 24, 5, 14, 15, 3, tzinfo=timezone(timedelta(hours=-7)))
    assert (msg.facility_name, msg.severity_name, msg.procid, msg.msgid) == ("local4", "notice", "8710", None)
    assert msg.message == "%% It's time"


def test_rfc5424_structured_data_kept_raw_with_escapes() -> None:
    sd = r'[exampleSDID@32473 iut="3" eventSource="App\] \"x\" \\"][examplePriority@32473 class="high"]'
    raw = f"<165>1 2003-10-11T22:14:15.003Z host evntslog - ID47 {sd} \ufeffhello".encode()
    msg = decode(raw, NOW)
    assert msg.structured_data == sd
    assert msg.message == "hello"


def test_rfc5424_structured_data_with_escaped_bracket_and_no_message() -> None:
    sd = r'[a@1 v="x\]y"]'
    msg = decode(f"<13>1 - - - - - {sd}".encode(), NOW)
    assert msg.structured_data == sd
    assert msg.message == ""
    assert msg.timestamp is None and msg.hostname is None


def test_rfc5424_all_nil_and_trailing_newline() -> None:
    msg = decode(b"<0>1 - - - - - - hello world\n", NOW)
    assert (msg.facility_name, msg.severity_name, msg.message) == ("kern", "emerg", "hello world")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"\0\0", "empty"),
        (b"<13", "PRI not closed"),
        (b"<12345>x", "PRI not closed"),
        (b"<1234>x", "out of range"),
        (b"<>x", "PRI is not a number"),
        (b"<1a>x", "PRI is not a number"),
        (b"<192>x", "out of range"),
        (b"<13>hello\0world", "NUL"),
        (b"<13>2 - - - - - - msg", "version 2"),
        (b"<13>1 - - - - -", "header needs"),
        (b"<13>1 2003-10-11 host app - - - msg", "RFC 3339"),
        (b"<13>1 2003-13-11T22:14:15Z host app - - - msg", "impossible date"),
        (b"<13>1 2003-10-11T22:14:15+25:00 host app - - - msg", "time zone"),
        (b"<13>1 - host  app - - - msg", "empty"),
        (b"<13>1 - h\xc3\xa9 app - - - msg", "printable ASCII"),
        (b"<13>1 - host " + b"a" * 49 + b" - - - msg", "APP-NAME longer"),
        (b"<13>1 - host app - " + b"m" * 33 + b" - msg", "MSGID longer"),
        (b"<13>1 - host app - - x msg", "STRUCTURED-DATA must be"),
        (b"<13>1 - host app - - [id a=b] msg", '="value"'),
        (b'<13>1 - host app - - [id a="b] msg', "unescaped ']'"),
        (b'<13>1 - host app - - [id a="b"', "not closed"),
        (b'<13>1 - host app - - [id  a="b"]', "PARAM-NAME"),
        (b'<13>1 - host app - - [id a="b"x]', "one space"),
        (b"<13>1 - host app - - []", "SD-ID"),
        (b"<13>1 - host app - - -msg", "followed by a space"),
        (b'<13>1 - host app - - [id a="\xff"] msg', "UTF-8"),
        (b"<13>Feb 30 10:00:00 host app: msg", "impossible date"),
    ],
)
def test_malformed_datagrams_name_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(SyslogDecodeError) as err:
        decode(raw, NOW)
    assert reason in err.value.reason


def test_bsd_classic() -> None:
    msg = decode(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed", NOW)
    assert msg.format == "rfc3164"
    assert msg.timestamp == datetime(2025, 10, 11, 22, 14, 15)  # nearest past October
    assert (msg.hostname, msg.app_name, msg.procid, msg.message) == ("mymachine", "su", None, "'su root' failed")


def test_bsd_missing_hostname_and_pid_tag() -> None:
    msg = decode(b"<30>Jan  2 03:04:05 systemd[1]: Started foo.service.", NOW)
    assert msg.timestamp == datetime(2026, 1, 2, 3, 4, 5)
    assert (msg.hostname, msg.app_name, msg.procid) == (None, "systemd", "1")
    assert msg.message == "Started foo.service."


def test_bsd_no_pri_defaults_to_user_notice() -> None:
    msg = decode(b"kernel: something happened", NOW)
    assert (msg.pri, msg.facility_name, msg.severity_name) == (13, "user", "notice")
    assert (msg.app_name, msg.message, msg.timestamp) == ("kernel", "something happened", None)


def test_bsd_plain_text_after_pri() -> None:
    msg = decode(b"<14>just some text", NOW)
    assert (msg.app_name, msg.hostname, msg.message) == (None, None, "just some text")


def test_bsd_sender_slightly_ahead_of_new_year() -> None:
    # Our clock says 2026-01-02; "Jan  2 03:30" from a fast clock is this year, "Dec 31" is last year.
    assert decode(b"<13>Jan  2 03:30:00 h a: m", NOW).timestamp == datetime(2026, 1, 2, 3, 30)
    assert decode(b"<13>Dec 31 23:00:00 h a: m", NOW).timestamp == datetime(2025, 12, 31, 23, 0)


def test_bsd_cisco_year_and_milliseconds() -> None:
    msg = decode(b"<189>Mar  1 2024 18:46:11.123: %SYS-5-CONFIG_I: Configured from console", NOW)
    assert msg.timestamp == datetime(2024, 3, 1, 18, 46, 11, 123000)
    assert (msg.app_name, msg.message) == ("%SYS-5-CONFIG_I", "Configured from console")


def test_bsd_with_iso_timestamp_rsyslog_style() -> None:
    msg = decode(b"<13>2024-05-01T10:00:00.123456789+0200 node7 CRON[99]: job ran", NOW)
    assert msg.timestamp == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert (msg.hostname, msg.app_name, msg.procid, msg.message) == ("node7", "CRON", "99", "job ran")


def test_bsd_latin1_and_utf8_bom_text() -> None:
    assert decode(b"<13>app: caf\xe9", NOW).message == "caf\xe9"
    assert decode(b"<13>app: \xef\xbb\xbfcaf\xc3\xa9", NOW).message.endswith("caf\xe9")
    assert decode(b"<13>\xef\xbb\xbfplain", NOW).message == "plain"


def test_leading_zero_pri_and_pri_zero() -> None:
    assert decode(b"<0>kern: x", NOW).pri == 0
    assert decode(b"<013>x", NOW).pri == 13


# ------------------------------------------------------------------------- properties

_ascii_field = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32).filter(
    lambda s: s != "-"
)
_aware = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)
_sd_value = st.text(max_size=20).filter(lambda s: "\0" not in s and all(not 0xD800 <= ord(c) <= 0xDFFF for c in s))
_sd_name = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c not in '= ]"'),
    min_size=1,
    max_size=32,
)


@st.composite
def _structured(draw: st.DrawFn) -> str | None:
    elements = draw(st.lists(st.tuples(_sd_name, st.lists(st.tuples(_sd_name, _sd_value), max_size=3)), max_size=3))
    if not elements:
        return None
    out = []
    for sd_id, params in elements:
        text = "".join(
            f' {name}="' + value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]") + '"'
            for name, value in params
        )
        out.append(f"[{sd_id}{text}]")
    return "".join(out)


_message_text = st.text(max_size=200).filter(
    lambda s: "\0" not in s and s == s.rstrip("\r\n") and all(not 0xD800 <= ord(c) <= 0xDFFF for c in s)
)


@given(
    facility=st.integers(0, 23),
    severity=st.integers(0, 7),
    timestamp=st.none() | _aware,
    hostname=st.none() | _ascii_field,
    app_name=st.none() | _ascii_field,
    procid=st.none() | _ascii_field,
    msgid=st.none() | _ascii_field,
    structured=_structured(),
    message=_message_text,
    bom=st.booleans(),
)
def test_rfc5424_round_trip(
    facility: int,
    severity: int,
    timestamp: datetime | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
    structured: str | None,
    message: str,
    bom: bool,
) -> None:
    assume(not message.startswith("\ufeff"))
    original = SyslogMessage(
        facility, severity, "rfc5424", timestamp, hostname, app_name, procid, msgid, structured, message
    )
    assert decode(encode_rfc5424(original, bom=bom), NOW) == original


@given(
    facility=st.integers(0, 23),
    severity=st.integers(0, 7),
    timestamp=st.datetimes(min_value=datetime(2025, 1, 4), max_value=datetime(2026, 1, 2, 3, 4, 5)).map(
        lambda d: d.replace(microsecond=0)
    ),
    hostname=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    app_name=st.from_regex(r"[A-Za-z][A-Za-z0-9_./-]{0,20}", fullmatch=True),
    procid=st.none() | st.from_regex(r"[0-9]{1,7}", fullmatch=True),
    message=_message_text.filter(lambda s: s == s.strip() and "\ufeff" not in s[:1]),
)
def test_rfc3164_round_trip_within_the_last_year(
    facility: int, severity: int, timestamp: datetime, hostname: str, app_name: str, procid: str | None, message: str
) -> None:
    assume(not (timestamp.month == 2 and timestamp.day == 29))
    original = SyslogMessage(facility, severity, "rfc3164", timestamp, hostname, app_name, procid, None, None, message)
    assert decode(encode_rfc3164(original), NOW) == original


@given(st.binary(max_size=600))
def test_fuzz_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        msg = decode(data, NOW)
    except SyslogDecodeError as err:
        assert err.reason
    else:
        assert 0 <= msg.facility <= 23 and 0 <= msg.severity <= 7


_PREFIXES = [
    b"<13>1 ",
    b"<34>1 2003-10-11T22:14:15.003Z host app 1 ID ",
    b"<13>Oct 11 22:14:15 ",
    b"<0>",
    b"<191>1 - - - - - ",
]


@given(st.sampled_from(_PREFIXES), st.binary(max_size=200))
def test_fuzz_after_plausible_headers(prefix: bytes, tail: bytes) -> None:
    with contextlib.suppress(SyslogDecodeError):
        decode(prefix + tail, NOW)


@given(st.text(alphabet='[]="\\ @a-1Z:.T<>', max_size=80))
def test_fuzz_structured_data_grammar(sd: str) -> None:
    try:
        msg = decode(b"<13>1 - h a - - " + sd.encode(), NOW)
    except SyslogDecodeError:
        pass
    else:
        assert msg.format == "rfc5424"
