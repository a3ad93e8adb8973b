"""DHCPv4 codec: realistic PXE/relay/udhcpc packets, byte-exact wire checks, RFC 3396, overload, fuzzing."""

from __future__ import annotations

import contextlib
import re
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bramble.proto import dhcp
from bramble.proto.dhcp import (
    DHCPACK,
    DHCPDISCOVER,
    DHCPNAK,
    DHCPOFFER,
    DHCPREQUEST,
    MAGIC_COOKIE,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    decode,
    encode,
    firmware_kind,
    option_ip,
    option_ips,
    option_str,
    option_u16,
    option_u32,
    reply_to,
)

MAC = bytes.fromhex("525400123456")
UUID = bytes.fromhex("0011223344556677889900aabbccddee")
IPXE_175 = bytes.fromhex("130101110101270101150101eb0301000017010119010110020100")
PXE_CLASS = b"PXEClient:Arch:00000:UNDI:002001"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def zeros(n: int) -> str:
    return "00" * n


def raw_packet(options: bytes, *, sname: bytes = b"", file: bytes = b"", hlen: int = 6) -> bytes:
    """A request header built with struct, independent of the codec, followed by ``options``."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,
        1,
        hlen,
        0,
        0xDEADBEEF,
        0,
        0,
        bytes(4),
        bytes(4),
        bytes(4),
        bytes(4),
        MAC.ljust(16, b"\0"),
        sname.ljust(64, b"\0"),
        file.ljust(128, b"\0"),
    )
    return header + MAGIC_COOKIE + options


def ipxe_discover() -> DhcpPacket:
    """What iPXE (as shipped in SeaBIOS/QEMU) broadcasts first on a BIOS VM."""
    return DhcpPacket(
        xid=0x3903F326,
        secs=4,
        chaddr=MAC,
        options={
            53: bytes([DHCPDISCOVER]),
            57: option_u16(1472),
            93: option_u16(0),
            94: bytes.fromhex("010201"),
            97: b"\0" + UUID,
            60: PXE_CLASS,
            77: b"iPXE",
            55: bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135, 175]),
            175: IPXE_175,
            61: b"\x01" + MAC,
        },
    )


# --- realistic round trips --------------------------------------------------------------------------


def test_ipxe_pxe_discover_round_trip() -> None:
    pkt = ipxe_discover()
    wire = encode(pkt)
    assert len(wire) >= 300
    back = decode(wire)
    assert back == pkt
    assert list(back.options) == list(pkt.options)  # order preserved (53 is already first)
    assert back.message_type == DHCPDISCOVER
    assert back.mac == "52:54:00:12:34:56"
    assert back.client_arch == 0 and back.client_archs == (0,)
    assert firmware_kind(back.client_arch) == ("bios", "i386", False)
    assert back.vendor_class == PXE_CLASS.decode()
    assert back.user_class == ("iPXE",)
    assert back.max_message_size == 1472
    assert back.param_request_list is not None and 175 in back.param_request_list
    assert back.client_id == b"\x01" + MAC
    assert back.options[97] == b"\0" + UUID
    assert back.options[175] == IPXE_175
    assert back.requested_ip is None and back.server_id is None and back.relay_agent_info is None


def test_relayed_request_round_trip_and_reply_keeps_giaddr_and_echoes_option_82() -> None:
    relay_info = b"\x01\x08eth0:100" + b"\x02\x06" + MAC
    req = DhcpPacket(
        hops=1,
        xid=0x01020304,
        giaddr=IPv4Address("10.0.1.1"),
        chaddr=MAC,
        options={
            53: bytes([DHCPREQUEST]),
            50: option_ip("10.0.1.50"),
            54: option_ip("10.0.0.2"),
            55: bytes([1, 3, 6]),
            82: relay_info,
        },
    )
    back = decode(encode(req))
    assert back == req
    assert back.giaddr == IPv4Address("10.0.1.1") and back.hops == 1
    assert back.requested_ip == IPv4Address("10.0.1.50")
    assert back.server_id == IPv4Address("10.0.0.2")
    assert back.relay_agent_info == {1: b"eth0:100", 2: MAC}

    ack = reply_to(back, DHCPACK, "10.0.1.50", "10.0.0.2", {1: option_ip("255.255.255.0"), 51: option_u32(3600)})
    assert ack.op == dhcp.BOOTREPLY and ack.hops == 0
    assert ack.giaddr == IPv4Address("10.0.1.1")
    assert ack.xid == req.xid and ack.chaddr == req.chaddr and ack.flags == req.flags
    assert list(ack.options) == [53, 54, 1, 51, 82]
    assert ack.options[82] == relay_info
    assert decode(encode(ack)) == ack


def test_udhcpc_request_round_trip() -> None:
    req = DhcpPacket(
        xid=0x7A1B2C3D,
        chaddr=MAC,
        options={
            53: bytes([DHCPREQUEST]),
            61: b"\x01" + MAC,
            50: option_ip("192.168.122.77"),
            54: option_ip("192.168.122.1"),
            12: b"alpine-vm",
            55: bytes([1, 3, 6, 12, 15, 28, 42]),
            57: option_u16(576),
            60: b"udhcp 1.36.1",
        },
    )
    wire = encode(req)
    assert len(wire) > 300
    back = decode(wire)
    assert back == req
    assert back.hostname == "alpine-vm"
    assert back.vendor_class == "udhcp 1.36.1"
    assert back.param_request_list == (1, 3, 6, 12, 15, 28, 42)
    assert back.user_class is None and back.client_arch is None
    assert not back.broadcast


# --- byte-exact wire checks ---------------------------------------------------------------------------


def test_discover_matches_hand_written_hex() -> None:
    pkt = DhcpPacket(
        xid=0x12345678,
        secs=4,
        flags=0x8000,
        chaddr=MAC,
        options={53: b"\x01", 93: b"\x00\x00", 60: PXE_CLASS},
    )
    expected = bytes.fromhex(
        "01 01 06 00  12345678  0004  8000"  # op htype hlen hops | xid | secs | flags
        "00000000 00000000 00000000 00000000"  # ciaddr yiaddr siaddr giaddr
        f"525400123456 {zeros(10)}  {zeros(64)}  {zeros(128)}"  # chaddr | sname | file
        "63825363"  # magic cookie
        "350101  5d020000"  # 53 DISCOVER, 93 x86 BIOS
        f"3c20 {PXE_CLASS.hex()}  ff"  # 60 vendor class, END
    )
    expected = expected.ljust(300, b"\0")
    assert encode(pkt) == expected
    assert decode(expected) == pkt
    assert pkt.broadcast


def test_pxe_offer_matches_hand_written_hex() -> None:
    offer = reply_to(
        ipxe_discover(),
        DHCPOFFER,
        "192.168.0.50",
        "192.168.0.1",
        {
            1: option_ip("255.255.255.0"),
            3: option_ips(["192.168.0.1"]),
            51: option_u32(3600),
            **dhcp.pxe_reply_options(),
        },
        siaddr="192.168.0.1",
        file="undionly.kpxe",
    )
    expected = bytes.fromhex(
        "02 01 06 00  3903f326  0000  0000"
        "00000000 c0a80032 c0a80001 00000000"  # yiaddr 192.168.0.50, siaddr 192.168.0.1
        f"525400123456 {zeros(10)}  {zeros(64)}  {b'undionly.kpxe'.hex()} {zeros(128 - 13)}"
        "63825363"
        "350102  3604c0a80001"  # 53 OFFER first, 54 server id second
        "0104ffffff00  0304c0a80001  330400000e10"  # mask, router, lease 3600
        f"3c09 {b'PXEClient'.hex()}  2b04060108ff"  # 60 PXEClient, 43 discovery control 8 + END
        "af03b00101"  # 175 { 176 = 1 }: iPXE no-pxedhcp
        "ff"
    ).ljust(300, b"\0")
    assert encode(offer) == expected


def test_options_53_and_54_are_written_first() -> None:
    pkt = DhcpPacket(options={1: option_ip("255.0.0.0"), 54: option_ip("10.0.0.1"), 53: b"\x05"})
    wire = encode(pkt)
    assert wire[240:].startswith(bytes.fromhex("350105 36040a000001 0104ff000000 ff"))


# --- RFC 3396 long options and option 52 overload ---------------------------------------------------


def test_long_option_is_split_on_encode_and_concatenated_on_decode() -> None:
    value = bytes(range(256)) * 2 + b"tail"  # 516 bytes
    wire = encode(DhcpPacket(options={53: b"\x05", 43: value}), max_size=1500)
    opts = wire[240:]
    assert opts[:3] == b"\x35\x01\x05"
    assert opts[3:5] == b"\x2b\xff" and opts[5 + 255 : 7 + 255] == b"\x2b\xff"
    assert opts[7 + 510 : 9 + 510] == b"\x2b\x06"
    assert opts[9 + 516] == 255
    assert decode(wire).options[43] == value


def test_repeated_codes_concatenate_in_order() -> None:
    raw = raw_packet(bytes.fromhex("0c03616263 350101 0c0378797a 00 0c00 ff"))
    pkt = decode(raw)
    assert pkt.options == {12: b"abcxyz", 53: b"\x01"}
    assert list(pkt.options) == [12, 53]


def test_overload_reads_options_from_file_then_sname() -> None:
    main = bytes.fromhex("350103 340103 2b03414243 ff")  # 53 REQUEST, 52 both, 43 "ABC"
    file = bytes.fromhex("2b02444500 0c04686f7374 ff")  # 43 continued "DE", 12 "host"
    sname = bytes.fromhex("0f076578616d706c65 ff")  # 15 "example"
    pkt = decode(raw_packet(main, file=file, sname=sname))
    assert pkt.options == {53: b"\x03", 43: b"ABCDE", 12: b"host", 15: b"example"}
    assert pkt.file == b"" and pkt.sname == b""
    assert 52 not in pkt.options
    assert decode(encode(pkt)) == pkt  # re-encoded without overload: everything fits in options


def test_overload_file_only_keeps_sname() -> None:
    main = bytes.fromhex("350101 340101 ff")
    pkt = decode(raw_packet(main, file=bytes.fromhex("0c0161ff"), sname=b"tftp.example"))
    assert pkt.options == {53: b"\x01", 12: b"a"}
    assert pkt.sname == b"tftp.example" and pkt.server_name == "tftp.example"
    assert pkt.file == b""


# --- malformed input: every failure is a DhcpDecodeError with a reason ------------------------------

MALFORMED = [
    (b"", r"too short: 0 bytes"),
    (raw_packet(b"")[:239], r"too short: 239 bytes"),
    (raw_packet(b"\xff")[:236] + b"\x63\x82\x53\x64\xff", r"wrong magic cookie 63825364"),
    (raw_packet(b"\xff", hlen=17), r"bad hlen 17"),
    (raw_packet(b"\x0c\x05abc"), r"option 12 in options overruns the buffer"),
    (raw_packet(b"\x35"), r"option 53 in options has no length byte"),
    (raw_packet(bytes.fromhex("340104ff")), r"bad option 52 \(overload\) value 04"),
    (raw_packet(bytes.fromhex("34020101ff")), r"bad option 52 \(overload\) value 0101"),
    (raw_packet(bytes.fromhex("340101ff"), file=bytes.fromhex("340102ff")), r"option 52 inside an overloaded field"),
    (raw_packet(bytes.fromhex("340102ff"), sname=b"\x0c\x50short"), r"option 12 in sname overruns the buffer"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_packets_raise_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DhcpDecodeError) as info:
        decode(data)
    assert re.search(reason, info.value.reason), info.value.reason
    assert isinstance(info.value, ValueError)


def test_bootp_without_option_53_is_accepted() -> None:
    pkt = decode(raw_packet(b"\xff"))
    assert pkt.message_type is None and pkt.options == {}


def test_small_packets_are_padded_to_bootp_minimum() -> None:
    wire = encode(DhcpPacket())
    assert len(wire) == 300 and wire[240] == 255 and wire[241:] == bytes(59)


def test_missing_end_is_tolerated() -> None:
    assert decode(raw_packet(b"\x35\x01\x01")).message_type == DHCPDISCOVER


@pytest.mark.parametrize(
    ("options", "attr", "reason"),
    [
        ({50: b"\x01\x02\x03"}, "requested_ip", r"option 50 has length 3, expected 4"),
        ({53: b""}, "message_type", r"option 53 has length 0, expected 1"),
        ({57: b"\x02"}, "max_message_size", r"option 57 has length 1"),
        ({93: b"\x00"}, "client_arch", r"option 93 length 1"),
        ({82: b"\x01\x05ab"}, "relay_agent_info", r"sub-option 1 overruns"),
        ({82: b"\x01"}, "relay_agent_info", r"sub-option header truncated"),
    ],
)
def test_malformed_option_values_raise_on_access(options: dict[int, bytes], attr: str, reason: str) -> None:
    pkt = DhcpPacket(options=options)
    with pytest.raises(DhcpDecodeError, match=reason):
        getattr(pkt, attr)


def test_user_class_rfc3004_list_and_plain() -> None:
    assert DhcpPacket(options={77: b"\x04iPXE\x03foo"}).user_class == ("iPXE", "foo")
    assert DhcpPacket(options={77: b"iPXE"}).user_class == ("iPXE",)
    assert DhcpPacket(options={77: b""}).user_class == ()


# --- encode limits and errors -------------------------------------------------------------------------


def test_oversized_reply_raises_instead_of_truncating() -> None:
    big = DhcpPacket(options={53: b"\x02", 43: b"x" * 400})
    with pytest.raises(DhcpEncodeError, match=r"over the 548-byte limit of max_size 576"):
        encode(big)
    assert len(encode(big, max_size=1500)) > 576 - 28


def test_reply_honours_client_option_57() -> None:
    req = ipxe_discover()  # option 57 = 1472
    reply = reply_to(req, DHCPOFFER, "10.0.0.9", "10.0.0.1", {43: b"x" * 700})
    assert len(encode(reply)) > 700
    with pytest.raises(DhcpEncodeError):
        encode(reply, max_size=576)
    assert dhcp.max_reply_size(DhcpPacket(options={57: option_u16(300)})) == 576
    assert dhcp.max_reply_size(DhcpPacket(options={57: b"\x01"})) == 576
    with pytest.raises(DhcpEncodeError, match="below the RFC 2131 minimum"):
        encode(reply, max_size=500)


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (DhcpPacket(sname=b"s" * 65), r"sname is 65 bytes"),
        (DhcpPacket(file=b"f" * 129), r"file is 129 bytes"),
        (DhcpPacket(chaddr=b"c" * 17), r"chaddr is 17 bytes"),
        (DhcpPacket(options={0: b""}), r"option code 0"),
        (DhcpPacket(options={255: b""}), r"option code 255"),
        (DhcpPacket(options={52: b"\x01"}), r"option 52"),
        (DhcpPacket(xid=1 << 32), r"header field out of range"),
        (DhcpPacket(hlen=17), r"bad hlen 17"),
    ],
)
def test_encode_rejects_unencodable_packets(pkt: DhcpPacket, reason: str) -> None:
    with pytest.raises(DhcpEncodeError, match=reason):
        encode(pkt)


# --- helpers ----------------------------------------------------------------------------------------


def test_option_encoders() -> None:
    assert option_ip("10.0.0.1") == b"\x0a\x00\x00\x01"
    assert option_ips(["10.0.0.1", IPv4Address("8.8.8.8")]) == bytes.fromhex("0a00000108080808")
    assert option_u32(3600) == b"\x00\x00\x0e\x10"
    assert option_u16(1500) == b"\x05\xdc"
    assert option_str("pxelinux.0") == b"pxelinux.0"
    assert dhcp.pxe_vendor_option() == bytes.fromhex("060108ff")
    assert dhcp.ipxe_encap_option() == bytes.fromhex("b00101")
    assert dhcp.pxe_reply_options(ipxe=False) == {60: b"PXEClient", 43: bytes.fromhex("060108ff")}
    for bad in (lambda: option_u16(1 << 16), lambda: option_u32(-1)):
        with pytest.raises(ValueError):
            bad()


def test_packet_field_helpers() -> None:
    pkt = DhcpPacket(chaddr=MAC)
    assert pkt.chaddr == MAC + bytes(10)
    pkt.broadcast = True
    assert pkt.flags == 0x8000 and pkt.broadcast
    pkt.broadcast = False
    assert pkt.flags == 0
    pkt.boot_file = "ipxe.efi"
    assert pkt.file == b"ipxe.efi" and pkt.boot_file == "ipxe.efi"
    assert DhcpPacket(hlen=0).mac == ""


def test_nak_has_no_yiaddr_or_ciaddr_and_ack_keeps_ciaddr() -> None:
    renew = DhcpPacket(ciaddr=IPv4Address("10.0.0.7"), chaddr=MAC, flags=0x8000, options={53: b"\x03"})
    nak = reply_to(renew, DHCPNAK, "10.0.0.7", "10.0.0.1")
    assert nak.yiaddr == IPv4Address(0) and nak.ciaddr == IPv4Address(0) and nak.broadcast
    ack = reply_to(renew, DHCPACK, "10.0.0.7", "10.0.0.1")
    assert ack.ciaddr == IPv4Address("10.0.0.7") and ack.yiaddr == IPv4Address("10.0.0.7")
    assert ack.message_type == DHCPACK and ack.server_id == IPv4Address("10.0.0.1")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0, ("bios", "i386", False)),
        (6, ("uefi", "i386", False)),
        (7, ("uefi", "x86_64", False)),
        (9, ("uefi", "x86_64", False)),
        (10, ("uefi", "arm", False)),
        (11, ("uefi", "aarch64", False)),
        (15, ("uefi", "i386", True)),
        (16, ("uefi", "x86_64", True)),
        (19, ("uefi", "aarch64", True)),
    ],
)
def test_firmware_kind(code: int, kind: tuple[str, str, bool]) -> None:
    assert firmware_kind(code) == kind
    assert firmware_kind(code).firmware == kind[0]


def test_firmware_kind_unknown() -> None:
    with pytest.raises(ValueError, match="unsupported client architecture 2"):
        firmware_kind(2)


# --- property-based ---------------------------------------------------------------------------------

ips = st.integers(0, 2**32 - 1).map(IPv4Address)
text_field = st.binary(max_size=64).map(lambda b: b.rstrip(b"\0"))
option_codes = st.integers(1, 254).filter(lambda c: c != 52)
packets = st.builds(
    DhcpPacket,
    op=st.integers(0, 255),
    htype=st.integers(0, 255),
    hlen=st.integers(0, 16),
    hops=st.integers(0, 255),
    xid=st.integers(0, 2**32 - 1),
    secs=st.integers(0, 2**16 - 1),
    flags=st.integers(0, 2**16 - 1),
    ciaddr=ips,
    yiaddr=ips,
    siaddr=ips,
    giaddr=ips,
    chaddr=st.binary(max_size=16),
    sname=text_field,
    file=st.binary(max_size=128).map(lambda b: b.rstrip(b"\0")),
    options=st.dictionaries(option_codes, st.binary(max_size=600), max_size=8),
)


@FAST
@given(packets)
def test_generated_packets_round_trip(pkt: DhcpPacket) -> None:
    wire = encode(pkt, max_size=1 << 16)
    back = decode(wire)
    assert back == pkt
    assert encode(back, max_size=1 << 16) == wire


def _touch_all_properties(pkt: DhcpPacket) -> None:
    for name in (
        "message_type",
        "requested_ip",
        "server_id",
        "client_id",
        "hostname",
        "vendor_class",
        "user_class",
        "client_arch",
        "param_request_list",
        "max_message_size",
        "relay_agent_info",
        "mac",
        "boot_file",
        "server_name",
        "broadcast",
    ):
        with contextlib.suppress(DhcpDecodeError):
            getattr(pkt, name)


# Mostly well-formed prefixes so the fuzzer reaches the option parsers, plus fully arbitrary bytes.
option_tails = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda ov, rest: bytes([52, 1, ov]) + rest, st.integers(0, 4), st.binary(max_size=300)),
)
arbitrary_packets = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda head, hlen, rest, tail: head + bytes([hlen]) + rest + MAGIC_COOKIE + tail,
        st.binary(min_size=2, max_size=2),
        st.integers(0, 18),  # mostly valid hlen, so the option parsers get exercised
        st.binary(min_size=233, max_size=233),
        option_tails,
    ),
)


@FAST
@given(arbitrary_packets)
def test_decode_arbitrary_bytes_only_raises_decode_error(data: bytes) -> None:
    try:
        pkt = decode(data)
    except DhcpDecodeError as exc:
        assert exc.reason
        return
    _touch_all_properties(pkt)
    # Stability: whatever decodes re-encodes to a packet that decodes to the same thing.
    wire = encode(pkt, max_size=1 << 16)
    assert decode(wire) == pkt
    assert encode(decode(wire), max_size=1 << 16) == wire


# --- scapy as an independent oracle -------------------------------------------------------------------


def test_scapy_oracle() -> None:
    scapy_dhcp = pytest.importorskip("scapy.layers.dhcp", reason="scapy not installed (test-only oracle)")
    bootp, dhcp_layer = scapy_dhcp.BOOTP, scapy_dhcp.DHCP

    theirs = bytes(
        bootp(op=1, xid=0xCAFEBABE, flags=0x8000, chaddr=MAC, giaddr="10.9.8.7")
        / dhcp_layer(
            options=[
                ("message-type", "request"),
                ("requested_addr", "10.9.8.50"),
                ("server_id", "10.9.8.1"),
                ("hostname", b"node-1"),
                ("param_req_list", [1, 3, 6]),
                ("vendor_class_id", PXE_CLASS),
                "end",
            ]
        )
    )
    pkt = decode(theirs)
    assert (pkt.xid, pkt.flags, pkt.mac) == (0xCAFEBABE, 0x8000, "52:54:00:12:34:56")
    assert pkt.giaddr == IPv4Address("10.9.8.7")
    assert pkt.message_type == DHCPREQUEST
    assert pkt.requested_ip == IPv4Address("10.9.8.50") and pkt.server_id == IPv4Address("10.9.8.1")
    assert pkt.hostname == "node-1" and pkt.param_request_list == (1, 3, 6)
    assert pkt.vendor_class == PXE_CLASS.decode()

    ours = encode(
        reply_to(
            pkt,
            DHCPACK,
            "10.9.8.50",
            "10.9.8.1",
            {1: option_ip("255.255.255.0"), 51: option_u32(7200), 43: b"v" * 300},
            file="ipxe.efi",
        ),
        max_size=1500,
    )
    parsed = bootp(ours)
    assert parsed.op == 2 and parsed.xid == 0xCAFEBABE and parsed.giaddr == "10.9.8.7"
    assert parsed.yiaddr == "10.9.8.50" and parsed.chaddr[:6] == MAC
    assert parsed.file.rstrip(b"\0") == b"ipxe.efi"
    opts = dict(o for o in parsed[dhcp_layer].options if isinstance(o, tuple) and len(o) == 2)
    assert opts["message-type"] == DHCPACK
    assert opts["server_id"] == "10.9.8.1"
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["lease_time"] == 7200
