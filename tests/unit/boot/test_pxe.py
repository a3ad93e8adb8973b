"""PXE policy (``bramble.boot.pxe``) and proxy-DHCP decisions (``decide_proxy``): no sockets."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from bramble.boot.dhcp import decide_proxy
from bramble.boot.pxe import PxeClient, PxePolicy
from bramble.proto.dhcp import (
    DHCPACK,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPOFFER,
    DHCPREQUEST,
    DhcpPacket,
    decode,
    encode,
)

SERVER = IPv4Address("10.99.0.1")
POLICY = PxePolicy(tftp_server=SERVER, http_base="http://10.99.0.1:8471/")
MAC = bytes.fromhex("52540012ab01")
MAC_TEXT = "52:54:00:12:ab:01"
UUID = bytes(range(16))


def request(**options: bytes) -> DhcpPacket:
    opts = {53: bytes((DHCPDISCOVER,)), **{int(k[1:]): v for k, v in options.items()}}
    return decode(encode(DhcpPacket(xid=0xABC, chaddr=MAC, options=opts)))


def firmware(arch: int, **options: bytes) -> DhcpPacket:
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()
    return request(o60=vendor, o93=arch.to_bytes(2, "big"), o97=b"\0" + UUID, **options)


def test_client_from_firmware_request() -> None:
    client = PxeClient.from_request(firmware(7))
    assert client.mac == MAC_TEXT and client.arch == 7 and client.arch_name == "uefi-x64"
    assert client.vendor_class == "PXEClient:Arch:00007:UNDI:003016" and client.uuid == UUID.hex()
    assert client.is_pxe and client.is_pxe_vendor and not client.is_ipxe and not client.is_http_client


def test_a_plain_client_is_the_same_record_as_one_built_normally() -> None:
    """The no-PXE-options fast path builds the same (equal, hashable, frozen) record."""
    client = PxeClient.from_request(request(o55=bytes((1, 3, 6))))
    assert client == PxeClient(MAC_TEXT, None, None, None, (), False, False, None)
    assert hash(client) == hash(PxeClient(MAC_TEXT, None, None, None, (), False, False, None))
    assert not client.is_pxe
    with pytest.raises(AttributeError):
        client.mac = "x"  # type: ignore[misc]


def test_ipxe_is_recognised_by_user_class_or_option_175() -> None:
    assert PxeClient.from_request(request(o77=b"iPXE")).is_ipxe
    assert PxeClient.from_request(request(o77=b"\x04iPXE")).is_ipxe  # RFC 3004 form
    assert PxeClient.from_request(request(o175=b"\xb1\x05\x01\x80\x86\x10\x0e")).is_ipxe
    assert not PxeClient.from_request(request(o77=b"\x05other")).is_ipxe


def test_malformed_pxe_options_do_not_raise() -> None:
    client = PxeClient.from_request(request(o93=b"\x00", o97=b"\x01\x02"))
    assert client.arch is None and client.uuid is None and client.user_class == ()


@pytest.mark.parametrize(
    ("arch", "name", "file"),
    [
        (0, "bios", "undionly.kpxe"),
        (6, "uefi-ia32", "snponly-ia32.efi"),
        (7, "uefi-x64", "snponly.efi"),
        (9, "uefi-x64", "snponly.efi"),
        (11, "uefi-arm64", "snponly-arm64.efi"),
    ],
)
def test_firmware_gets_the_ipxe_binary_for_its_arch(arch: int, name: str, file: str) -> None:
    client = PxeClient.from_request(firmware(arch))
    answer = POLICY.choose(client)
    assert client.arch_name == name
    assert answer is not None and answer.file == file and answer.kind == "loader" and answer.next_server == SERVER
    assert dict(answer.options) == {}


def test_ipxe_gets_its_script_never_the_binary_again() -> None:
    for arch in (0, 7, 11):
        answer = POLICY.choose(PxeClient.from_request(firmware(arch, o77=b"iPXE")))
        assert answer is not None and answer.kind == "script"
        assert answer.file == f"http://10.99.0.1:8471/boot/{MAC_TEXT}.ipxe"
        assert dict(answer.options) == {175: b"\xb0\x01\x01"}  # 175.176 = 1: no ProxyDHCP wait


def test_uefi_http_boot_gets_a_url_and_httpclient() -> None:
    answer = POLICY.choose(PxeClient.from_request(request(o60=b"HTTPClient:Arch:00016:UNDI:003001", o93=b"\0\x10")))
    assert answer is not None and answer.kind == "http-loader"
    assert answer.file == "http://10.99.0.1:8471/files/ipxe.efi" and dict(answer.options) == {60: b"HTTPClient"}


def test_non_pxe_and_unsupported_clients_get_nothing() -> None:
    assert POLICY.choose(PxeClient.from_request(request())) is None
    assert POLICY.choose(PxeClient.from_request(request(o60=b"MSFT 5.0"))) is None
    assert POLICY.choose(PxeClient.from_request(firmware(10))) is None  # arm32: no loader configured
    no_bios = PxePolicy(tftp_server=SERVER, http_base="http://x:1", bios_loader=None)
    assert no_bios.choose(PxeClient.from_request(firmware(0))) is None


def test_policy_refuses_loaders_that_would_chainload_forever() -> None:
    with pytest.raises(ValueError, match="bios_loader"):
        PxePolicy(tftp_server=SERVER, http_base="http://x:1", bios_loader="boot.ipxe")
    with pytest.raises(ValueError, match="uefi_x64_loader"):
        PxePolicy(tftp_server=SERVER, http_base="http://x:1", uefi_x64_loader="http://x/snponly.efi")
    with pytest.raises(ValueError, match="http_base"):
        PxePolicy(tftp_server=SERVER, http_base="10.0.0.1:8471")


# -- proxy-DHCP -------------------------------------------------------------------------------------


def test_proxy_offer_has_no_address_but_the_boot_answer() -> None:
    decision = decide_proxy(firmware(7, o55=bytes([1, 3, 66, 67])), POLICY.choose, SERVER, boot_server=False)
    offer = decision.reply
    assert offer is not None and decision.outcome == "offered" and decision.boot_file == "snponly.efi"
    assert offer.message_type == DHCPOFFER and offer.yiaddr == IPv4Address(0) and offer.siaddr == SERVER
    assert offer.boot_file == "snponly.efi" and offer.options[54] == SERVER.packed
    assert offer.options[60] == b"PXEClient" and offer.options[43] == b"\x06\x01\x08\xff"
    assert offer.options[97] == b"\0" + UUID and offer.options[67] == b"snponly.efi\0"
    assert 51 not in offer.options and 1 not in offer.options and 3 not in offer.options  # no lease, no config
    assert decision.wire is not None and decode(decision.wire) == offer


def test_proxy_ignores_non_pxe_clients_and_requests_on_port_67() -> None:
    assert decide_proxy(request(), POLICY.choose, SERVER, boot_server=False).outcome == "ignored"
    assert decide_proxy(request(o77=b"iPXE"), POLICY.choose, SERVER, boot_server=False).outcome == "ignored"
    assert decide_proxy(firmware(0, o53=bytes((DHCPREQUEST,))), POLICY.choose, SERVER, boot_server=False).reply is None
    assert decide_proxy(firmware(0), POLICY.choose, SERVER, boot_server=True).reply is None  # DISCOVER on 4011


def test_proxy_ipxe_gets_script_without_175() -> None:
    ipxe = request(o60=b"PXEClient:Arch:00000:UNDI:002001", o77=b"iPXE", o175=b"\xb1\x05\x01\x80\x86\x10\x0e")
    offer = decide_proxy(ipxe, POLICY.choose, SERVER, boot_server=False).reply
    assert offer is not None and offer.boot_file == f"http://10.99.0.1:8471/boot/{MAC_TEXT}.ipxe"
    assert 175 not in offer.options


def test_boot_server_request_gets_an_ack_with_the_file() -> None:
    req = firmware(7, o53=bytes((DHCPREQUEST,)), o43=b"\x47\x04\x80\x00\x00\x00\xff")
    req.ciaddr = IPv4Address("10.99.0.150")
    decision = decide_proxy(req, POLICY.choose, SERVER, boot_server=True)
    ack = decision.reply
    assert ack is not None and decision.outcome == "acked" and ack.message_type == DHCPACK
    assert ack.yiaddr == IPv4Address(0) and ack.boot_file == "snponly.efi" and ack.siaddr == SERVER
    assert ack.options[43] == b"\x47\x04\x80\x00\x00\x00\xff"  # the boot item it answers, echoed
    assert ack.options[60] == b"PXEClient" and ack.options[97] == b"\0" + UUID
    inform = decide_proxy(firmware(0, o53=bytes((DHCPINFORM,))), POLICY.choose, SERVER, boot_server=True)
    assert inform.reply is not None and inform.reply.options[43] == b"\x06\x01\x08\xff"
