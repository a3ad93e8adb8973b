"""A PXE ROM's DHCP conversation crafted with scapy (independent of Bramble's codec), run in a client netns.

DISCOVER as a PXE ROM (option 60 ``PXEClient:Arch:..``, 93, 97, 55), collect the OFFERs for a while,
REQUEST the one that carries an address, configure it, then (if a proxy offer came) send the PXE
boot-server REQUEST unicast to the proxy's port 4011 as OVMF and iPXE do. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from scapy.all import AsyncSniffer, conf, raw, sendp
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

conf.checkIPaddr = False
conf.verb = 0


def options_of(pkt: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for opt in pkt[DHCP].options:
        if isinstance(opt, tuple) and len(opt) >= 2:
            name, value = opt[0], opt[1]
            out[str(name)] = value.hex() if isinstance(value, bytes) else str(value)
    return out


def summary(pkt: Any) -> dict[str, Any]:
    bootp = pkt[BOOTP]
    return {
        "yiaddr": bootp.yiaddr,
        "siaddr": bootp.siaddr,
        "ciaddr": bootp.ciaddr,
        "file": bootp.file.rstrip(b"\0").decode(errors="replace"),
        "options": options_of(pkt),
    }


def pxe_options(mtype: str, arch: int, uuid: bytes, extra: list[Any]) -> list[Any]:
    return [
        ("message-type", mtype),
        *extra,
        ("param_req_list", [1, 3, 6, 43, 54, 60, 66, 67, 97, 128, 129, 130]),
        ("vendor_class_id", f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()),
        ("pxe_client_architecture", arch.to_bytes(2, "big")),
        ("pxe_client_network_interface", b"\x01\x03\x10"),
        ("pxe_client_machine_identifier", b"\0" + uuid),
        "end",
    ]


def broadcast(iface: str, mac: str, xid: int, options: list[Any]) -> None:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    frame = (
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=chaddr, xid=xid, flags=0x8000)
        / DHCP(options=options)
    )
    sendp(frame, iface=iface)


def collect(iface: str, send: Any, want: Any, timeout: float) -> list[Any]:
    """Resend every second (as ROMs do) until ``want(replies)`` or the timeout; replies via a callback."""
    got: list[Any] = []
    listening = threading.Event()
    # No libpcap here, so no BPF: filter in Python.
    sniffer = AsyncSniffer(
        iface=iface,
        lfilter=lambda p: UDP in p and p[UDP].dport == 68 and BOOTP in p and DHCP in p,
        prn=got.append,
        store=False,
        started_callback=listening.set,
    )
    sniffer.start()
    if not listening.wait(10):  # the sniffer's socket must exist before the first reply
        raise AssertionError("the packet sniffer did not start within 10 s")
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline and not want(list(got)):
        if time.monotonic() >= next_send:
            send()
            next_send = time.monotonic() + 1.0
        time.sleep(0.02)
    time.sleep(0.2)  # late duplicates still count
    sniffer.stop()
    return list(got)


def mtype_of(pkt: Any) -> int:
    for opt in pkt[DHCP].options:
        if isinstance(opt, tuple) and opt[0] == "message-type":
            return int(opt[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--arch", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=8.0)
    args = parser.parse_args()
    mac = Path(f"/sys/class/net/{args.iface}/address").read_text().strip()
    xid = int.from_bytes(os.urandom(4), "big")
    uuid = os.urandom(16)
    result: dict[str, Any] = {"mac": mac, "uuid": uuid.hex()}

    def discover() -> None:
        broadcast(args.iface, mac, xid, pxe_options("discover", args.arch, uuid, []))

    def both_offers(pkts: list[Any]) -> bool:
        offers = [p for p in pkts if p[BOOTP].xid == xid and mtype_of(p) == 2]
        return any(p[BOOTP].yiaddr != "0.0.0.0" for p in offers) and any(p[BOOTP].yiaddr == "0.0.0.0" for p in offers)

    started = time.monotonic()
    pkts = collect(args.iface, discover, both_offers, args.timeout)
    result["seconds_to_offers"] = round(time.monotonic() - started, 2)
    offers = [p for p in pkts if p[BOOTP].xid == xid and mtype_of(p) == 2]
    result["offers"] = [summary(p) for p in offers]
    address_offers = [p for p in offers if p[BOOTP].yiaddr != "0.0.0.0"]
    proxy_offers = [p for p in offers if p[BOOTP].yiaddr == "0.0.0.0"]
    if not address_offers:
        print(json.dumps(result))
        return
    chosen = address_offers[0]
    server_id = options_of(chosen)["server_id"]
    yiaddr = chosen[BOOTP].yiaddr

    def request() -> None:
        extra = [("server_id", server_id), ("requested_addr", yiaddr)]
        broadcast(args.iface, mac, xid, pxe_options("request", args.arch, uuid, extra))

    pkts = collect(args.iface, request, lambda ps: any(mtype_of(p) == 5 for p in ps), args.timeout)
    acks = [p for p in pkts if p[BOOTP].xid == xid and mtype_of(p) == 5]
    result["seconds_to_ack"] = round(time.monotonic() - started, 2)
    result["acks"] = [summary(p) for p in acks]
    if not acks or not proxy_offers:
        print(json.dumps(result))
        return
    mask = options_of(acks[0]).get("subnet_mask", "255.255.255.0")
    subprocess.run(["ip", "addr", "add", f"{yiaddr}/{mask}", "dev", args.iface], check=True)
    proxy_id = options_of(proxy_offers[0])["server_id"]
    boot_xid = xid + 1
    boot_request = BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=boot_xid, ciaddr=yiaddr) / DHCP(
        options=pxe_options("request", args.arch, uuid, [("vendor_specific", b"\x47\x04\x80\x00\x00\x00\xff")])
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((yiaddr, 68))
        sock.settimeout(1.0)
        reply = None
        deadline = time.monotonic() + args.timeout
        while reply is None and time.monotonic() < deadline:
            sock.sendto(raw(boot_request), (proxy_id, 4011))
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            pkt = BOOTP(data)
            if pkt.xid == boot_xid:
                reply = pkt
                result["boot_ack_from"] = list(source)
        result["seconds_to_boot_ack"] = round(time.monotonic() - started, 2)
        if reply is not None:
            result["boot_ack"] = summary(reply)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
