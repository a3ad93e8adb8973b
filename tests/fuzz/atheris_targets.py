"""Coverage-guided fuzzing (atheris, libFuzzer) of what the boot role reads off the network.

The hypothesis tests throw random and mutated datagrams at the running servers; atheris instead watches
which branches each input reaches and mutates towards new ones, so it gets past checks (magic cookie,
option lengths, option overload, TFTP option lists, syslog headers) that random bytes rarely pass.

Each target checks more than "no crash": what the decoder accepts must re-encode to a fixed point, the
DHCP servers must answer or drop every datagram without an unexpected exception (``stats["errors"]``),
every reply they send must decode and belong to the request, and the HTTP boot path check must never
hand out a descriptor outside its root. A failed check raises, and libFuzzer stops, saves the input
(``-artifact_prefix``) and exits non-zero.

    python tests/fuzz/atheris_targets.py TARGET [libFuzzer flags] [CORPUS_DIR ...]

TARGET is one of ``TARGETS``. An empty first corpus directory is seeded with valid packets first.
``tests/unit/proto/test_atheris.py`` runs every target for a fixed number of inputs with a fixed seed;
a long campaign is the same command with ``-max_total_time=3600``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = ("dhcp-codec", "dhcp-server", "tftp-codec", "tftp-path", "syslog-codec", "http-path")


class CheckFailed(AssertionError):
    """An input broke an invariant (not just a crash): libFuzzer saves it like one."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


# -- seeds --------------------------------------------------------------------------------------


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from: each target's mutations begin inside the accepting paths."""
    if target in ("dhcp-codec", "dhcp-server"):
        return _dhcp_seeds()
    if target == "tftp-codec":
        from bramble.proto.tftp import Ack, Data, Error, ErrorCode, OptionAck, ReadRequest, encode

        return [
            encode(ReadRequest("pxelinux.0", "octet", {})),
            encode(ReadRequest("undionly.kpxe", "octet", {"blksize": "1468", "tsize": "0", "windowsize": "16"})),
            encode(ReadRequest("boot/x.cfg", "netascii", {"timeout": "3"})),
            encode(Data(1, b"x" * 512)),
            encode(Ack(65535)),
            encode(Error(ErrorCode.FILE_NOT_FOUND, "file not found")),
            encode(OptionAck({"blksize": "1432", "tsize": "1024"})),
        ]
    if target == "syslog-codec":
        return [
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
            b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
            b'[exampleSDID@32473 iut="3" eventSource="Application"] \xef\xbb\xbfAn application event',
            b"<13>1 - - - - - - plain",
            b"kernel: no PRI at all",
            b"<6>Jan  1 00:00:00 host ipxe[12]: boot",
        ]
    if target == "tftp-path":
        from bramble.proto.tftp import ReadRequest, encode

        names = ("undionly.kpxe", "sub/kernel", "in-link/kernel", "../secret", "out-link", "loop/a", "fifo", "sub")
        return [encode(ReadRequest(name, mode, {})) for name in names for mode in ("octet", "netascii")]
    if target == "http-path":
        return [b"undionly.kpxe", b"sub/kernel", b"in-link/kernel", b"../etc/passwd", b"out-link", b"loop/a", b"sub"]
    raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")


def _dhcp_seeds() -> list[bytes]:
    from ipaddress import IPv4Address

    from bramble.proto.dhcp import DHCPDISCOVER, DHCPINFORM, DHCPRELEASE, DHCPREQUEST, DhcpPacket, encode

    mac = bytes.fromhex("525400123456")
    relay = IPv4Address("10.96.0.2")
    pxe = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\0\0", 94: b"\1\2\1", 97: b"\0" + bytes(16)}
    ipxe = {77: b"iPXE", 175: b"\x13\x01\x01", 93: b"\0\7", 60: b"PXEClient:Arch:00007:UNDI:003016"}
    prl = {55: bytes((1, 3, 6, 12, 15, 28, 42, 43, 60, 66, 67, 128, 175))}
    packets = [
        DhcpPacket(xid=1, chaddr=mac, options={53: bytes((DHCPDISCOVER,)), **prl}),
        DhcpPacket(xid=2, chaddr=mac, giaddr=relay, options={53: bytes((DHCPDISCOVER,)), **pxe, **prl}),
        DhcpPacket(xid=3, chaddr=mac, flags=0x8000, options={53: bytes((DHCPDISCOVER,)), **ipxe, 57: b"\5\xc0"}),
        DhcpPacket(
            xid=4,
            chaddr=mac,
            options={53: bytes((DHCPREQUEST,)), 50: bytes((10, 96, 0, 10)), 54: bytes((10, 96, 0, 1)), 12: b"node1"},
        ),
        DhcpPacket(xid=5, chaddr=mac, ciaddr=IPv4Address("10.96.0.10"), options={53: bytes((DHCPREQUEST,))}),
        DhcpPacket(xid=6, chaddr=mac, ciaddr=IPv4Address("10.96.0.10"), options={53: bytes((DHCPRELEASE,))}),
        DhcpPacket(xid=7, chaddr=mac, ciaddr=IPv4Address("10.96.0.10"), options={53: bytes((DHCPINFORM,)), **prl}),
        DhcpPacket(xid=8, chaddr=mac, options={}),  # plain BOOTP
        DhcpPacket(  # a PXE boot-server (port 4011) REQUEST from an arm64 UEFI client
            xid=9, chaddr=mac, options={53: bytes((DHCPREQUEST,)), 60: b"PXEClient", 93: b"\0\x0b", 71: b"\x80\0\0\0"}
        ),
    ]
    wire = [encode(p) for p in packets]
    # Option overload (52): options continued in the file and sname fields.
    overloaded = bytearray(wire[0])
    overloaded[108:112] = bytes((12, 2, b"o"[0], b"k"[0]))
    cut = overloaded.index(255, 240)
    wire.append(bytes(overloaded[:cut]) + b"\x34\x01\x01\xff")
    return wire


# -- targets ------------------------------------------------------------------------------------


def _dhcp_codec() -> Callable[[bytes], None]:
    from bramble.proto.dhcp import DhcpDecodeError, DhcpEncodeError, decode, encode

    def run(data: bytes) -> None:
        try:
            packet = decode(data)
        except DhcpDecodeError:
            return
        try:
            wire = encode(packet, max_size=65_535)
        except DhcpEncodeError:
            return  # e.g. an option too long to encode again: refused with a reason, not a crash
        again = decode(wire)
        check(again == packet, f"decode(encode(p)) != p for {data.hex()}")
        check(encode(again, max_size=65_535) == wire, "encoding is not a fixed point")

    return run


class _Socket:
    """Stands in for a server's UDP socket: keeps what was sent, and where to."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, target: tuple[str, int]) -> int:
        self.sent.append((data, target))
        return len(data)


def _dhcp_server(work: Path) -> Callable[[bytes], None]:
    """The authoritative and the proxy server's whole datagram path (decode, PXE, decide, encode, send)."""
    from ipaddress import IPv4Address, IPv4Network

    from bramble.boot.dhcp import DhcpConfig, DhcpServer, ProxyDhcpServer
    from bramble.boot.leases import LeaseStore, Reservation
    from bramble.boot.pxe import PxePolicy
    from bramble.proto.dhcp import BOOTREPLY, DhcpDecodeError, decode

    server_ip = IPv4Address("10.96.0.1")
    subnet = IPv4Network("10.96.0.0/24")
    policy = PxePolicy(tftp_server=server_ip, http_base="http://10.96.0.1:8471")
    config = DhcpConfig(
        server_ip=server_ip,
        subnet=subnet,
        range_start=IPv4Address("10.96.0.10"),
        range_end=IPv4Address("10.96.0.40"),  # small: the fuzzer also reaches an exhausted pool
        router=server_ip,
        dns=(server_ip,),
        domain="lab.example",
        reservations={"52:54:00:12:34:56": Reservation(IPv4Address("10.96.0.5"), "node1")},
        boot_file_for=policy.choose,
    )
    now = [1_800_000_000.0]

    def clock() -> float:
        now[0] += 7.0  # time moves: offers and leases expire, quarantines end
        return now[0]

    events: list[Any] = []
    authoritative = DhcpServer(
        config, LeaseStore(work / "leases.json", config.pool()), interface=None, on_event=events.append, clock=clock
    )
    proxy = ProxyDhcpServer(server_ip, policy.choose, interface=None, on_event=events.append, clock=clock)
    sockets: list[tuple[Any, _Socket]] = []
    for server, count in ((authoritative, 1), (proxy, 2)):  # the proxy has port 67 and 4011
        for _ in range(count):
            sock = _Socket()
            server._sockets.append(sock)  # type: ignore[arg-type]  # duck-typed: only sendto is used
            sockets.append((server, sock))
    pool = config.pool()

    def run(data: bytes) -> None:
        try:
            request = decode(data)
        except DhcpDecodeError:
            request = None
        for sock in (s for _, s in sockets):
            sock.sent.clear()
        authoritative._on_datagram(data, ("10.96.0.2", 68))
        proxy._on_dhcp(data, ("10.96.0.2", 68))
        proxy._on_boot_server(data, ("10.96.0.2", 4011))
        check(authoritative.stats["errors"] == 0, f"authoritative server error on {data.hex()}")
        check(proxy.stats["errors"] == 0, f"proxy server error on {data.hex()}")
        events.clear()
        for server, sock in sockets:
            for wire, _target in sock.sent:
                check(request is not None, "a reply to a datagram that does not decode")
                assert request is not None
                reply = decode(wire)
                check(reply.op == BOOTREPLY, "reply is not a BOOTREPLY")
                check(reply.xid == request.xid and reply.chaddr == request.chaddr, "reply to another exchange")
                if server is proxy:
                    check(int(reply.yiaddr) == 0, f"proxy handed out an address: {reply.yiaddr}")
                elif int(reply.yiaddr):
                    check(pool.usable(reply.yiaddr) and reply.yiaddr in subnet, f"{reply.yiaddr} is not ours to give")

    return run


def _tftp_codec() -> Callable[[bytes], None]:
    from bramble.proto.tftp import ReadRequest, TftpDecodeError, decode, encode, negotiate_read

    def run(data: bytes) -> None:
        try:
            packet = decode(data)
        except TftpDecodeError:
            return
        wire = encode(packet)
        check(decode(wire) == packet, f"decode(encode(p)) != p for {data.hex()}")
        if isinstance(packet, ReadRequest):
            accepted, _ = negotiate_read(packet.options, file_size=1_000_000, max_blksize=1468, max_windowsize=64)
            check(set(accepted) <= set(packet.options), f"OACK has options the client did not ask for: {accepted}")

    return run


def _syslog_codec() -> Callable[[bytes], None]:
    from datetime import datetime

    from bramble.proto.syslog import SyslogDecodeError, decode, encode_rfc5424

    now = datetime(2026, 11, 21, 12, 0, 0)

    def run(data: bytes) -> None:
        try:
            message = decode(data, now)
        except SyslogDecodeError:
            return
        check(0 <= message.facility < 24 and 0 <= message.severity < 8, "PRI out of range")
        check(isinstance(message.message, str), "message is not text")
        if message.format == "rfc5424":  # what we accepted, re-encoded, reads back the same
            again = decode(encode_rfc5424(message), now)
            check(again == message, f"decode(encode(m)) != m: {again} != {message}")

    return run


def _tricky_tree(work: Path) -> Path:
    """A files root with symlinks inside, out of the root, dangling and in a loop, and a FIFO."""
    root = work / "root"
    (root / "sub").mkdir(parents=True)
    (root / "undionly.kpxe").write_bytes(b"loader")
    (root / "sub" / "kernel").write_bytes(b"kernel")
    (work / "secret").write_bytes(b"outside")
    (root / "in-link").symlink_to("sub")
    (root / "out-link").symlink_to(work / "secret")
    (root / "dangling").symlink_to("nowhere")
    (root / "loop").symlink_to("loop")
    os.mkfifo(root / "fifo")
    return root


def _http_path(work: Path) -> Callable[[bytes], None]:
    """``open_under`` (HTTP boot) never hands out a descriptor outside its root."""
    from bramble.boot.http import _Refused, open_under

    root = _tricky_tree(work)
    real_root = root.resolve()

    def run(data: bytes) -> None:
        requested = data.decode("utf-8", "replace")
        try:
            fd, _info = open_under(root, requested)
        except _Refused as refused:
            check(refused.status in (400, 403, 404), f"status {refused.status} for {requested!r}")
            return
        try:
            opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
            check(opened.is_relative_to(real_root), f"{requested!r} opened {opened}, outside the root")
        finally:
            os.close(fd)

    return run


def _tftp_path(work: Path) -> Callable[[bytes], None]:
    """A decoded RRQ through the TFTP server's open check: a descriptor below the root, or a refusal."""
    from bramble.boot.tftp import TftpServer, _RequestRefused
    from bramble.proto.tftp import ReadRequest, TftpDecodeError, WriteRequest, decode

    server = TftpServer(_tricky_tree(work), host="127.0.0.1", port=0)

    def run(data: bytes) -> None:
        try:
            request = decode(data)
        except TftpDecodeError:
            return
        if not isinstance(request, ReadRequest | WriteRequest):
            return
        try:
            fd, _size = server._open(request)
        except _RequestRefused:
            return
        except (OSError, RuntimeError):  # refused by the caller (_serve) as "cannot open file"
            return
        try:
            opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
            check(opened.is_relative_to(server.root), f"{request.filename!r} opened {opened}, outside the root")
            check(isinstance(request, ReadRequest), "a write request was opened")
        finally:
            os.close(fd)

    return run


def make_target(target: str, work: Path) -> Callable[[bytes], None]:
    if target == "dhcp-codec":
        return _dhcp_codec()
    if target == "dhcp-server":
        return _dhcp_server(work)
    if target == "tftp-codec":
        return _tftp_codec()
    if target == "tftp-path":
        return _tftp_path(work)
    if target == "syslog-codec":
        return _syslog_codec()
    if target == "http-path":
        return _http_path(work)
    raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} TARGET [libFuzzer flags] [CORPUS_DIR ...]; TARGET one of {', '.join(TARGETS)}")
        sys.exit(2)
    target, rest = argv[1], [argv[0], *argv[2:]]
    with atheris.instrument_imports(include=["bramble"]):  # before anything imports them uninstrumented
        import bramble.boot.dhcp
        import bramble.boot.http
        import bramble.boot.leases
        import bramble.boot.pxe
        import bramble.boot.tftp
        import bramble.proto.dhcp
        import bramble.proto.syslog
        import bramble.proto.tftp  # noqa: F401
    corpus = next((Path(a) for a in rest[1:] if not a.startswith("-")), None)
    if corpus is not None and corpus.is_dir() and not any(corpus.iterdir()):
        for i, seed in enumerate(seeds(target)):
            (corpus / f"seed-{i}").write_bytes(seed)
    # libFuzzer ends the process with exit(): no Python clean-up runs after Fuzz(), so the caller
    # gives the scratch directory (BRAMBLE_FUZZ_WORK) and removes it; by hand, it is a fresh temp dir.
    work = Path(os.environ.get("BRAMBLE_FUZZ_WORK") or tempfile.mkdtemp(prefix="bramble-fuzz-"))
    run = make_target(target, work)
    atheris.Setup(rest, run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
