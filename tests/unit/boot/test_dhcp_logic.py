"""RFC 2131 server decisions of ``bramble.boot.dhcp.decide``: no sockets, injected time."""

from __future__ import annotations

import re
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bramble.boot.dhcp import DhcpConfig, decide, destination, handle
from bramble.boot.leases import LeaseFileError, LeaseStore, Reservation
from bramble.boot.pxe import PxePolicy
from bramble.proto.dhcp import (
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    DhcpPacket,
    decode,
    encode,
    option_ip,
    option_u16,
    option_u32,
)

IP = IPv4Address
SERVER = IP("10.9.0.1")
T0 = 1_700_000_000.0
MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")
MAC_R = bytes.fromhex("0200000000ee")

CONFIG = DhcpConfig(
    server_ip=SERVER,
    subnet=IPv4Network("10.9.0.0/24"),
    range_start=IP("10.9.0.10"),
    range_end=IP("10.9.0.12"),
    router=IP("10.9.0.254"),
    dns=(IP("10.9.0.53"),),
    lease_seconds=3600,
    quarantine_seconds=600,
    reservations={"02:00:00:00:00:ee": Reservation(IP("10.9.0.100"), "reserved-host")},
)


def store_for(config: DhcpConfig = CONFIG, path: Path | None = None) -> LeaseStore:
    return LeaseStore(path, config.pool(), clock=lambda: T0)


def packet(mtype: int, mac: bytes = MAC_A, *, xid: int = 7, **fields: object) -> DhcpPacket:
    options: dict[int, bytes] = {53: bytes((mtype,))}
    extra = fields.pop("options", {})
    options.update(extra)  # type: ignore[call-overload]
    pkt = DhcpPacket(xid=xid, chaddr=mac, options=options, **fields)  # type: ignore[arg-type]
    return decode(encode(pkt))  # every request goes through the codec, as on the wire


def req_ip(ip: str) -> dict[int, bytes]:
    return {50: option_ip(ip)}


def dora(store: LeaseStore, mac: bytes = MAC_A, now: float = T0, config: DhcpConfig = CONFIG) -> IPv4Address:
    offer = handle(packet(DHCPDISCOVER, mac), store, config, now)
    assert offer is not None and offer.message_type == DHCPOFFER
    ack = handle(
        packet(DHCPREQUEST, mac, options={**req_ip(str(offer.yiaddr)), 54: option_ip(SERVER)}), store, config, now
    )
    assert ack is not None and ack.message_type == DHCPACK and ack.yiaddr == offer.yiaddr
    return ack.yiaddr


def test_dora_with_options_in_prl_order() -> None:
    store = store_for()
    discover = packet(DHCPDISCOVER, options={55: bytes([6, 3, 1, 12, 42])})
    offer = handle(discover, store, CONFIG, T0)
    assert offer is not None
    assert offer.yiaddr == IP("10.9.0.10") and offer.server_id == SERVER and offer.xid == 7
    codes = list(offer.options)
    assert codes[:2] == [53, 54]
    assert codes.index(6) < codes.index(3) < codes.index(1)
    assert offer.options[51] == option_u32(3600) and offer.options[58] == option_u32(1800)
    assert offer.options[59] == option_u32(3150) and offer.options[3] == option_ip("10.9.0.254")
    assert 12 not in offer.options  # no hostname for a client without a reservation
    assert destination(discover, offer) == ("255.255.255.255", 68)
    request = packet(DHCPREQUEST, options={**req_ip("10.9.0.10"), 54: option_ip(SERVER)})
    ack = handle(request, store, CONFIG, T0)
    assert ack is not None and ack.message_type == DHCPACK and ack.yiaddr == IP("10.9.0.10")
    lease = store.get(IP("10.9.0.10"))
    assert lease is not None and lease.state == "bound" and lease.expires_at == T0 + 3600


def test_same_client_gets_old_address_after_store_restart(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    first = store_for(path=path)
    dora(first, MAC_B)
    ip_a = dora(first, MAC_A)
    second = store_for(path=path)
    offer = handle(packet(DHCPDISCOVER, MAC_A), second, CONFIG, T0 + 10)
    assert offer is not None and offer.yiaddr == ip_a


def test_release_quarantine_then_reuse() -> None:
    store = store_for(replace(CONFIG, range_end=IP("10.9.0.11")))
    config = replace(CONFIG, range_end=IP("10.9.0.11"))
    ip_a = dora(store, MAC_A, config=config)
    decision = decide(packet(DHCPRELEASE, MAC_A, ciaddr=ip_a, options={54: option_ip(SERVER)}), store, config, T0 + 5)
    assert decision.reply is None and decision.outcome == "released"
    offer_b = handle(packet(DHCPDISCOVER, MAC_B), store, config, T0 + 10)
    assert offer_b is not None and offer_b.yiaddr == IP("10.9.0.11")
    # B never requested; its offer lapses. Within quarantine, A's old address is still withheld from B...
    assert handle(packet(DHCPDISCOVER, MAC_B), store, config, T0 + 100) is not None
    dora(store, MAC_B, now=T0 + 100, config=config)
    third = bytes.fromhex("02000000000c")
    assert decide(packet(DHCPDISCOVER, third), store, config, T0 + 200).outcome == "exhausted"
    # ...and after it the freed address is offered again.
    offer_c = handle(packet(DHCPDISCOVER, third), store, config, T0 + 5 + 601)
    assert offer_c is not None and offer_c.yiaddr == ip_a


def test_reservation_gets_its_address_and_hostname() -> None:
    store = store_for()
    offer = handle(packet(DHCPDISCOVER, MAC_R), store, CONFIG, T0)
    assert offer is not None and offer.yiaddr == IP("10.9.0.100") and offer.options[12] == b"reserved-host"
    request = packet(DHCPREQUEST, MAC_A, options={**req_ip("10.9.0.100"), 54: option_ip(SERVER)})
    nak = handle(request, store, CONFIG, T0)
    assert nak is not None and nak.message_type == DHCPNAK and nak.yiaddr == IP(0)


def test_exhaustion_gives_no_offer() -> None:
    store = store_for()
    for i in range(3):
        dora(store, bytes.fromhex(f"0200000001{i:02x}"))
    decision = decide(packet(DHCPDISCOVER, MAC_B), store, CONFIG, T0)
    assert decision.reply is None and decision.outcome == "exhausted"


def test_selecting_for_another_server_is_ignored_and_frees_our_offer() -> None:
    store = store_for()
    offer = handle(packet(DHCPDISCOVER, MAC_A), store, CONFIG, T0)
    assert offer is not None
    other = packet(DHCPREQUEST, MAC_A, options={**req_ip("10.9.0.200"), 54: option_ip("10.9.0.2")})
    decision = decide(other, store, CONFIG, T0)
    assert decision.reply is None and decision.outcome == "ignored"
    assert store.get(offer.yiaddr) is None


def test_nak_for_wrong_requested_address() -> None:
    store = store_for()
    dora(store, MAC_B)  # B holds .10
    request = packet(DHCPREQUEST, MAC_A, options={**req_ip("10.9.0.10"), 54: option_ip(SERVER)})
    nak = handle(request, store, CONFIG, T0)
    assert nak is not None and nak.message_type == DHCPNAK and 51 not in nak.options
    assert destination(request, nak) == ("255.255.255.255", 68)


def test_init_reboot() -> None:
    store = store_for()
    ip_a = dora(store, MAC_A)
    ok = handle(packet(DHCPREQUEST, MAC_A, options=req_ip(str(ip_a))), store, CONFIG, T0 + 50)
    assert ok is not None and ok.message_type == DHCPACK and ok.yiaddr == ip_a
    wrong_subnet = handle(packet(DHCPREQUEST, MAC_A, options=req_ip("192.168.1.5")), store, CONFIG, T0)
    assert wrong_subnet is not None and wrong_subnet.message_type == DHCPNAK
    not_theirs = handle(packet(DHCPREQUEST, MAC_A, options=req_ip("10.9.0.11")), store, CONFIG, T0)
    assert not_theirs is not None and not_theirs.message_type == DHCPNAK
    someone_elses = handle(packet(DHCPREQUEST, MAC_B, options=req_ip(str(ip_a))), store, CONFIG, T0)
    assert someone_elses is not None and someone_elses.message_type == DHCPNAK
    unknown = decide(packet(DHCPREQUEST, MAC_B, options=req_ip("10.9.0.12")), store, CONFIG, T0)
    assert unknown.reply is None and unknown.outcome == "ignored"


def test_renewing_extends_and_unicasts() -> None:
    store = store_for()
    ip_a = dora(store, MAC_A)
    renew = packet(DHCPREQUEST, MAC_A, ciaddr=ip_a)
    ack = handle(renew, store, CONFIG, T0 + 1800)
    assert ack is not None and ack.message_type == DHCPACK and ack.ciaddr == ip_a and ack.yiaddr == ip_a
    lease = store.get(ip_a)
    assert lease is not None and lease.expires_at == T0 + 1800 + 3600
    assert destination(renew, ack) == (str(ip_a), 68)
    stolen = handle(packet(DHCPREQUEST, MAC_B, ciaddr=ip_a), store, CONFIG, T0 + 1800)
    assert stolen is not None and stolen.message_type == DHCPNAK


def test_decline_holds_the_address() -> None:
    store = store_for()
    ip_a = dora(store, MAC_A)
    decline = packet(DHCPDECLINE, MAC_A, options={**req_ip(str(ip_a)), 54: option_ip(SERVER)})
    decision = decide(decline, store, CONFIG, T0 + 1)
    assert decision.reply is None and decision.outcome == "declined"
    lease = store.get(ip_a)
    assert lease is not None and lease.state == "declined"
    offer = handle(packet(DHCPDISCOVER, MAC_A), store, CONFIG, T0 + 2)
    assert offer is not None and offer.yiaddr != ip_a


def test_inform_acks_without_lease() -> None:
    store = store_for()
    inform = packet(DHCPINFORM, MAC_A, ciaddr=IP("10.9.0.77"), options={55: bytes([1, 6])})
    ack = handle(inform, store, CONFIG, T0)
    assert ack is not None and ack.message_type == DHCPACK and ack.yiaddr == IP(0)
    assert ack.ciaddr == IP("10.9.0.77") and 51 not in ack.options and 58 not in ack.options
    assert ack.options[6] == option_ip("10.9.0.53")
    assert destination(inform, ack) == ("10.9.0.77", 68)
    assert list(store.leases()) == []


def test_relayed_request_goes_back_to_the_relay() -> None:
    store = store_for()
    relay_info = bytes([1, 3]) + b"sw1"
    discover = packet(DHCPDISCOVER, giaddr=IP("10.9.0.254"), hops=1, options={82: relay_info})
    offer = handle(discover, store, CONFIG, T0)
    assert offer is not None and offer.giaddr == IP("10.9.0.254")
    assert list(offer.options)[-1] == 82 and offer.options[82] == relay_info
    assert destination(discover, offer) == ("10.9.0.254", 67)
    foreign = decide(packet(DHCPDISCOVER, giaddr=IP("172.16.0.1")), store, CONFIG, T0)
    assert foreign.reply is None and foreign.outcome == "ignored"
    nak = handle(
        packet(DHCPREQUEST, giaddr=IP("10.9.0.254"), options={**req_ip("10.9.0.99"), 54: option_ip(SERVER)}),
        store,
        CONFIG,
        T0,
    )
    assert nak is not None and nak.message_type == DHCPNAK and nak.broadcast


def test_option_57_honoured() -> None:
    many_dns = tuple(IP(f"10.9.1.{i}") for i in range(1, 101))  # 400 bytes of option 6
    config = replace(CONFIG, dns=many_dns)
    small = handle(packet(DHCPDISCOVER, options={55: bytes([1, 3, 6])}), store_for(config), config, T0)
    assert small is not None and 6 not in small.options and 1 in small.options
    assert len(encode(small)) <= 576 - 28
    big_req = packet(DHCPDISCOVER, options={55: bytes([1, 3, 6]), 57: option_u16(1500)})
    big = handle(big_req, store_for(config), config, T0)
    assert big is not None and big.options[6] == b"".join(ip.packed for ip in many_dns)
    assert big.client_max_size == 1500 and len(encode(big)) > 576


def test_client_may_ask_for_a_shorter_lease_only() -> None:
    store = store_for()
    offer = handle(packet(DHCPDISCOVER, options={51: option_u32(120)}), store, CONFIG, T0)
    assert offer is not None and offer.options[51] == option_u32(120)
    offer = handle(packet(DHCPDISCOVER, MAC_B, options={51: option_u32(99999)}), store, CONFIG, T0)
    assert offer is not None and offer.options[51] == option_u32(3600)


def test_pxe_policy_sets_siaddr_file_66_67_and_pxe_options() -> None:
    config = replace(CONFIG, boot_file_for=PxePolicy(tftp_server=SERVER, http_base="http://10.9.0.1:8471").choose)
    pxe = packet(DHCPDISCOVER, options={55: bytes([1, 66, 67]), 60: b"PXEClient:Arch:00000", 93: b"\0\0"})
    decision = decide(pxe, store_for(config), config, T0)
    offer = decision.reply
    assert offer is not None and offer.siaddr == SERVER and offer.boot_file == "undionly.kpxe"
    assert decision.boot_file == "undionly.kpxe" and decision.wire == encode(offer)
    assert offer.options[66] == b"10.9.0.1" and offer.options[67] == b"undionly.kpxe\0"
    assert offer.options[60] == b"PXEClient" and offer.options[43] == b"\x06\x01\x08\xff"
    assert 175 not in offer.options  # firmware PXE is not iPXE
    ipxe = packet(DHCPDISCOVER, MAC_B, options={60: b"PXEClient:Arch:00000:UNDI:002001", 77: b"iPXE", 93: b"\0\0"})
    offer = handle(ipxe, store_for(config), config, T0)
    assert offer is not None and offer.boot_file == "http://10.9.0.1:8471/boot/02:00:00:00:00:0b.ipxe"
    assert offer.options[175] == b"\xb0\x01\x01" and 67 not in offer.options  # 67 only when asked for
    plain = handle(packet(DHCPDISCOVER, MAC_B), store_for(config), config, T0)
    assert plain is not None and plain.siaddr == IP(0) and plain.file == b"" and 67 not in plain.options
    assert 60 not in plain.options and 43 not in plain.options


def test_boot_policy_also_answers_request_and_inform_but_never_a_nak() -> None:
    config = replace(CONFIG, boot_file_for=PxePolicy(tftp_server=SERVER, http_base="http://10.9.0.1:8471").choose)
    store = store_for(config)
    opts = {60: b"PXEClient:Arch:00007", 93: b"\0\x07"}
    offer = handle(packet(DHCPDISCOVER, options=opts), store, config, T0)
    assert offer is not None
    ack = handle(packet(DHCPREQUEST, options={**opts, 50: offer.yiaddr.packed, 54: SERVER.packed}), store, config, T0)
    assert ack is not None and ack.message_type == DHCPACK and ack.boot_file == "snponly.efi"
    nak = handle(packet(DHCPREQUEST, options={**opts, 50: IP("10.9.0.11").packed}), store, config, T0)
    assert nak is not None and nak.message_type == DHCPNAK and nak.file == b"" and 43 not in nak.options


def test_reservations_only_config_and_runtime_updates() -> None:
    config = DhcpConfig(server_ip=SERVER, subnet=IPv4Network("10.9.0.0/24"))
    store = store_for(config)
    assert decide(packet(DHCPDISCOVER), store, config, T0).outcome == "ignored"
    config = replace(config, reservations={"02:00:00:00:00:0a": Reservation(IP("10.9.0.77"))})
    store.set_pool(config.pool(), T0)
    offer = handle(packet(DHCPDISCOVER), store, config, T0)
    assert offer is not None and offer.yiaddr == IP("10.9.0.77")
    ack = handle(packet(DHCPREQUEST, options={50: offer.yiaddr.packed, 54: SERVER.packed}), store, config, T0)
    assert ack is not None and ack.message_type == DHCPACK
    # IPAM moves the address to another VM: the old binding ends, the new owner gets it at once.
    config = replace(config, reservations={"02:00:00:00:00:0b": Reservation(IP("10.9.0.77"))})
    store.set_pool(config.pool(), T0)
    assert decide(packet(DHCPDISCOVER), store, config, T0).outcome == "ignored"
    offer = handle(packet(DHCPDISCOVER, MAC_B), store, config, T0)
    assert offer is not None and offer.yiaddr == IP("10.9.0.77")


def test_corrupt_lease_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    path.write_text('{"version": 1, "leases": [')
    with pytest.raises(LeaseFileError, match=re.escape(f"corrupt lease file {path}")):
        store_for(path=path)


def test_non_dhcp_and_server_messages_are_ignored() -> None:
    store = store_for()
    bootp = decode(encode(DhcpPacket(xid=1, chaddr=MAC_A)))
    assert decide(bootp, store, CONFIG, T0).outcome == "ignored"
    assert decide(packet(DHCPOFFER), store, CONFIG, T0).outcome == "ignored"


def test_shared_reply_options_never_carry_one_clients_answer_into_anothers() -> None:
    """Replies share option blocks per (option 55, lease time): boot options and lease times stay per client."""
    config = replace(CONFIG, boot_file_for=PxePolicy(tftp_server=SERVER, http_base="http://10.9.0.1:8471").choose)
    store = store_for(config)
    wanted = {55: bytes([1, 3, 66, 67])}
    pxe = handle(packet(DHCPDISCOVER, options={**wanted, 60: b"PXEClient:Arch:00000", 93: b"\0\0"}), store, config, T0)
    assert pxe is not None and pxe.options[67] == b"undionly.kpxe\0" and 43 in pxe.options
    plain = handle(packet(DHCPDISCOVER, MAC_B, options=wanted), store, config, T0)
    assert plain is not None and plain.file == b""
    assert not {43, 60, 66, 67} & set(plain.options), plain.options
    short = handle(packet(DHCPDISCOVER, MAC_R, options={**wanted, 51: option_u32(600)}), store, config, T0)
    again = handle(packet(DHCPDISCOVER, bytes.fromhex("02000000000c"), options=wanted), store, config, T0)
    assert short is not None and short.options[51] == option_u32(600) and short.options[58] == option_u32(300)
    assert again is not None and again.options[51] == option_u32(3600)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {55: bytes([1, 3, 6, 15, 28, 42])},
        {55: bytes([3, 1]), 51: option_u32(900)},
        {55: bytes([1, 3]), 57: option_u16(576)},  # the smallest limit: the reply must still fit
        {82: b"\x01\x02ab"},  # relayed: option 82 must come back last
        {12: b"a-host", 61: b"\x01\x02\x00\x00\x00\x00\x0a"},
    ],
)
def test_reply_bytes_are_the_encoding_of_the_reply(options: dict[int, bytes]) -> None:
    """The server sends option blocks it encoded once; they must be byte for byte what encode() gives."""
    store = store_for()
    offered = decide(packet(DHCPDISCOVER, options=options), store, CONFIG, T0)
    assert offered.reply is not None and offered.wire == encode(offered.reply)
    request = {**options, 50: offered.reply.yiaddr.packed, 54: SERVER.packed}
    acked = decide(packet(DHCPREQUEST, options=request), store, CONFIG, T0)
    assert acked.reply is not None and acked.reply.message_type == DHCPACK
    assert acked.wire == encode(acked.reply) and decode(acked.wire) == acked.reply
    informed = decide(packet(DHCPINFORM, options=options, ciaddr=IP("10.9.0.77")), store, CONFIG, T0)
    assert informed.reply is not None and informed.wire == encode(informed.reply)
