"""DHCPv4/BOOTP wire codec (RFC 2131, 2132, 3396, 3004, 3046, 4578, PXE 2.1).

Pure bytes in, dataclass out (and back), so the DHCP/PXE server and its tests share one strict codec:
``decode`` turns any malformed input into a ``DhcpDecodeError`` with a short reason instead of leaking
``IndexError``/``struct.error``, and ``encode`` refuses to truncate what does not fit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Literal, NamedTuple

__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "DHCPACK",
    "DHCPDECLINE",
    "DHCPDISCOVER",
    "DHCPINFORM",
    "DHCPNAK",
    "DHCPOFFER",
    "DHCPRELEASE",
    "DHCPREQUEST",
    "MAGIC_COOKIE",
    "DhcpDecodeError",
    "DhcpEncodeError",
    "DhcpPacket",
    "FirmwareKind",
    "decode",
    "encode",
    "encode_options",
    "firmware_kind",
    "ipxe_encap_option",
    "max_reply_size",
    "option_ip",
    "option_ips",
    "option_str",
    "option_u16",
    "option_u32",
    "pxe_reply_options",
    "pxe_vendor_option",
    "reply_to",
]

# --- BOOTP header -------------------------------------------------------------------------------

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
BROADCAST_FLAG = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_SIZE = _HEADER.size  # 236
MIN_PACKET_SIZE = HEADER_SIZE + len(MAGIC_COOKIE)  # 240: header + cookie, no options
BOOTP_MIN_SIZE = 300  # RFC 951 vend field is 64 bytes; some relays and ROMs drop shorter packets
DEFAULT_MAX_SIZE = 576  # RFC 2131 §2: every client must accept a 576-byte IP datagram
IP_UDP_OVERHEAD = 28  # option 57 counts the IP (20) and UDP (8) headers, as ISC dhcpd and clients do

# --- Message types (RFC 2132 §9.6) ---------------------------------------------------------------

DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

# --- Option codes (RFC 2132 unless noted) ---------------------------------------------------------

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS_SERVERS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN_NAME = 15
OPT_BROADCAST = 28
OPT_VENDOR_SPECIFIC = 43
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST_LIST = 55
OPT_MAX_MESSAGE_SIZE = 57
OPT_RENEWAL_TIME = 58  # T1
OPT_REBINDING_TIME = 59  # T2
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER_NAME = 66
OPT_BOOTFILE_NAME = 67
OPT_USER_CLASS = 77  # RFC 3004
OPT_RELAY_AGENT_INFO = 82  # RFC 3046
OPT_CLIENT_ARCH = 93  # RFC 4578
OPT_CLIENT_NDI = 94  # RFC 4578
OPT_CLIENT_UUID = 97  # RFC 4578
OPT_IPXE_ENCAP = 175  # iPXE's encapsulated options
OPT_END = 255

# Option 52 values: which fixed fields carry more options.
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2
OVERLOAD_BOTH = 3

# PXE 2.1 vendor sub-options (inside option 43) and iPXE sub-options (inside option 175).
PXE_DISCOVERY_CONTROL = 6
PXE_DISCOVERY_SKIP = 8  # bit 3: boot file is in this reply, skip boot-server discovery
IPXE_NO_PXEDHCP = 176  # tells iPXE not to wait for a separate ProxyDHCP answer

# Relay agent sub-options (RFC 3046).
RELAY_CIRCUIT_ID = 1
RELAY_REMOTE_ID = 2

_ZERO = IPv4Address(0)
_ZERO_PACKED = bytes(4)


class DhcpDecodeError(ValueError):
    """Malformed DHCP input; ``reason`` is short enough to log once per bad packet."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DhcpEncodeError(ValueError):
    """The packet cannot be put on the wire as given (too large, bad field); we never truncate."""


@dataclass
class DhcpPacket:
    """One BOOTP/DHCP message; ``options`` maps code to the (RFC 3396 concatenated) value, in order.

    ``sname``/``file`` hold the fixed fields without their NUL padding. After decoding an overloaded
    packet (option 52) they are empty and the options they carried are merged into ``options``.
    ``client_max_size`` is not on the wire: ``reply_to`` sets it from the request's option 57 so that
    ``encode`` honours the client's limit by default.
    """

    op: int = BOOTREQUEST
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _ZERO
    yiaddr: IPv4Address = _ZERO
    siaddr: IPv4Address = _ZERO
    giaddr: IPv4Address = _ZERO
    chaddr: bytes = b""
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)
    client_max_size: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Normalise to the decoded form so that ``decode(encode(p)) == p``.
        if type(self.chaddr) is not bytes or len(self.chaddr) != 16:
            self.chaddr = bytes(self.chaddr).ljust(16, b"\0")
        # Inline test of _text_field's fast path: two packets are built per packet served.
        sname, file = self.sname, self.file
        if type(sname) is not bytes or sname.endswith(b"\0"):
            self.sname = _text_field(sname)
        if type(file) is not bytes or file.endswith(b"\0"):
            self.file = _text_field(file)

    # --- header helpers ---

    @property
    def broadcast(self) -> bool:
        """RFC 2131 B flag: the client cannot receive unicast before it is configured."""
        return bool(self.flags & BROADCAST_FLAG)

    @broadcast.setter
    def broadcast(self, value: bool) -> None:
        self.flags = (self.flags | BROADCAST_FLAG) if value else (self.flags & ~BROADCAST_FLAG)

    @property
    def mac(self) -> str:
        """Hardware address as ``aa:bb:cc:dd:ee:ff`` (the first ``hlen`` bytes of ``chaddr``)."""
        return self.chaddr[: self.hlen].hex(":")

    @property
    def server_name(self) -> str:
        return self.sname.decode("utf-8", "replace")

    @server_name.setter
    def server_name(self, value: str) -> None:
        self.sname = _text_field(value)

    @property
    def boot_file(self) -> str:
        return self.file.decode("utf-8", "replace")

    @boot_file.setter
    def boot_file(self, value: str) -> None:
        self.file = _text_field(value)

    # --- option helpers: None when absent, DhcpDecodeError when malformed ---

    @property
    def message_type(self) -> int | None:
        """None for plain BOOTP (no option 53)."""
        raw = self.options.get(OPT_MESSAGE_TYPE)  # read several times per packet served: inlined
        if raw is None:
            return None
        if len(raw) != 1:
            raise DhcpDecodeError(f"option {OPT_MESSAGE_TYPE} has length {len(raw)}, expected 1")
        return raw[0]

    @property
    def requested_ip(self) -> IPv4Address | None:
        return _opt_ip(self.options, OPT_REQUESTED_IP)

    @property
    def server_id(self) -> IPv4Address | None:
        return _opt_ip(self.options, OPT_SERVER_ID)

    @property
    def client_id(self) -> bytes | None:
        return self.options.get(OPT_CLIENT_ID)

    @property
    def hostname(self) -> str | None:
        raw = self.options.get(OPT_HOSTNAME)
        return None if raw is None else raw.decode("utf-8", "replace")

    @property
    def vendor_class(self) -> str | None:
        raw = self.options.get(OPT_VENDOR_CLASS)
        return None if raw is None else raw.decode("utf-8", "replace")

    @property
    def user_class(self) -> tuple[str, ...] | None:
        """RFC 3004 length-prefixed list; iPXE sends a bare ``iPXE`` instead, read as one class."""
        raw = self.options.get(OPT_USER_CLASS)
        if raw is None:
            return None
        items = _rfc3004_items(raw)
        if items is None:
            items = [raw] if raw else []
        return tuple(item.decode("utf-8", "replace") for item in items)

    @property
    def client_archs(self) -> tuple[int, ...] | None:
        """All architectures of option 93 (RFC 4578 allows a list, most firmware sends one)."""
        raw = self.options.get(OPT_CLIENT_ARCH)
        if raw is None:
            return None
        if not raw or len(raw) % 2:
            raise DhcpDecodeError(f"option 93 length {len(raw)} is not a non-empty multiple of 2")
        return tuple(v for (v,) in struct.iter_unpack("!H", raw))

    @property
    def client_arch(self) -> int | None:
        archs = self.client_archs
        return None if archs is None else archs[0]

    @property
    def param_request_list(self) -> tuple[int, ...] | None:
        raw = self.options.get(OPT_PARAM_REQUEST_LIST)
        return None if raw is None else tuple(raw)

    @property
    def max_message_size(self) -> int | None:
        return _opt_uint(self.options, OPT_MAX_MESSAGE_SIZE, 2)

    @property
    def relay_agent_info(self) -> dict[int, bytes] | None:
        """RFC 3046 sub-options of option 82 (1 circuit id, 2 remote id, ...)."""
        raw = self.options.get(OPT_RELAY_AGENT_INFO)
        if raw is None:
            return None
        subs: dict[int, bytes] = {}
        i = 0
        while i < len(raw):
            if i + 2 > len(raw):
                raise DhcpDecodeError("option 82 sub-option header truncated")
            code, length = raw[i], raw[i + 1]
            if i + 2 + length > len(raw):
                raise DhcpDecodeError(f"option 82 sub-option {code} overruns the option")
            subs[code] = subs.get(code, b"") + raw[i + 2 : i + 2 + length]
            i += 2 + length
        return subs


def _text_field(value: bytes | str) -> bytes:
    if type(value) is bytes and not value.endswith(b"\0"):
        return value  # already normalised (the per-packet case)
    raw = value.encode() if isinstance(value, str) else bytes(value)
    return raw.rstrip(b"\0")


def _opt_uint(options: Mapping[int, bytes], code: int, size: int) -> int | None:
    raw = options.get(code)
    if raw is None:
        return None
    if len(raw) != size:
        raise DhcpDecodeError(f"option {code} has length {len(raw)}, expected {size}")
    return int.from_bytes(raw, "big")


def _opt_ip(options: Mapping[int, bytes], code: int) -> IPv4Address | None:
    raw = options.get(code)
    if raw is None:
        return None
    if len(raw) != 4:
        raise DhcpDecodeError(f"option {code} has length {len(raw)}, expected 4")
    return _ip4(raw)


def _rfc3004_items(raw: bytes) -> list[bytes] | None:
    """Split ``len, data`` instances; None when ``raw`` is not such a list."""
    items: list[bytes] = []
    i = 0
    while i < len(raw):
        length = raw[i]
        if length == 0 or i + 1 + length > len(raw):
            return None
        items.append(raw[i + 1 : i + 1 + length])
        i += 1 + length
    return items or None


# --- decode ----------------------------------------------------------------------------------------


def _parse_area(area: bytes, where: str, out: dict[int, bytes]) -> None:
    """Add one option area's options to ``out``; stop at END or the area's end.

    RFC 3396: a code that appears again (here or in an earlier area) is one option, concatenated in
    order of appearance; areas are parsed in the RFC's order (options, file, sname).
    """
    i = 0
    n = len(area)
    while i < n:
        code = area[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return
        if i + 1 >= n:
            raise DhcpDecodeError(f"option {code} in {where} has no length byte")
        end = i + 2 + area[i + 1]
        if end > n:
            raise DhcpDecodeError(f"option {code} in {where} overruns the buffer ({area[i + 1]} bytes)")
        value = area[i + 2 : end]
        if code in out:
            out[code] += value
        else:
            out[code] = value
        i = end


# Addresses seen in packets, by their 4 bytes: a relay, a server id and a subnet's addresses repeat in
# every packet, and IPv4Address() parses in Python. Addresses are immutable, so sharing them is safe.
_IP_CACHE: dict[bytes, IPv4Address] = {bytes(4): _ZERO}
_IP_CACHE_SIZE = 4096


def _ip4(raw: bytes) -> IPv4Address:
    ip = _IP_CACHE.get(raw)
    if ip is None:
        if len(_IP_CACHE) >= _IP_CACHE_SIZE:
            _IP_CACHE.clear()
            _IP_CACHE[bytes(4)] = _ZERO
        ip = _IP_CACHE[raw] = IPv4Address(raw)
    return ip


def decode(data: bytes) -> DhcpPacket:
    """Parse one DHCP/BOOTP message; any malformation raises ``DhcpDecodeError``."""
    data = bytes(data)
    if len(data) < MIN_PACKET_SIZE:
        raise DhcpDecodeError(f"packet too short: {len(data)} bytes, need at least {MIN_PACKET_SIZE}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file) = (
        _HEADER.unpack_from(data)
    )
    if hlen > 16:
        raise DhcpDecodeError(f"bad hlen {hlen}: chaddr holds at most 16 bytes")
    if data[HEADER_SIZE:MIN_PACKET_SIZE] != MAGIC_COOKIE:
        raise DhcpDecodeError(f"wrong magic cookie {data[HEADER_SIZE:MIN_PACKET_SIZE].hex()}")

    options: dict[int, bytes] = {}
    _parse_area(data[MIN_PACKET_SIZE:], "options", options)

    overload = options.get(OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (OVERLOAD_FILE, OVERLOAD_SNAME, OVERLOAD_BOTH):
            raise DhcpDecodeError(f"bad option 52 (overload) value {overload.hex()}")
        # RFC 3396 §5: options field, then file, then sname.
        if overload[0] & OVERLOAD_FILE:
            _parse_area(file, "file", options)
            file = b""
        if overload[0] & OVERLOAD_SNAME:
            _parse_area(sname, "sname", options)
            sname = b""
        if options[OPT_OVERLOAD] != overload:
            raise DhcpDecodeError("option 52 inside an overloaded field")
        del options[OPT_OVERLOAD]

    # Built without __init__: every field is already in its normalised form (one packet per datagram).
    packet = object.__new__(DhcpPacket)
    packet.__dict__ = {
        "op": op,
        "htype": htype,
        "hlen": hlen,
        "hops": hops,
        "xid": xid,
        "secs": secs,
        "flags": flags,
        "ciaddr": _ip4(ciaddr),
        "yiaddr": _ip4(yiaddr),
        "siaddr": _ip4(siaddr),
        "giaddr": _ip4(giaddr),
        "chaddr": chaddr,
        "sname": sname.rstrip(b"\0"),
        "file": file.rstrip(b"\0"),
        "options": options,
        "client_max_size": None,
    }
    return packet


# --- encode ----------------------------------------------------------------------------------------


def _encode_options(options: Mapping[int, bytes]) -> bytes:
    out = bytearray()
    # 53 first and 54 second (some PXE ROMs read only the first options), then the rest as given.
    # Replies are built in that order already; other dicts get the two written first.
    codes = iter(options)
    first, second = next(codes, None), next(codes, None)
    ordered = first == OPT_MESSAGE_TYPE and (second == OPT_SERVER_ID or OPT_SERVER_ID not in options)
    if not ordered:
        for code in (OPT_MESSAGE_TYPE, OPT_SERVER_ID):
            value = options.get(code)
            if value is not None:
                _append_option(out, code, value)
    for code, value in options.items():
        size = len(value)
        if 0 < code < 255 and code != OPT_OVERLOAD and size <= 255:  # the common case, inline
            if not ordered and code in (OPT_MESSAGE_TYPE, OPT_SERVER_ID):
                continue
            out.append(code)
            out.append(size)
            out += value
            continue
        if not 0 < code < 255:
            raise DhcpEncodeError(f"option code {code} is not an encodable option (1..254)")
        if code == OPT_OVERLOAD:
            raise DhcpEncodeError("option 52 (overload) is managed by the codec, not set by callers")
        if ordered or code not in (OPT_MESSAGE_TYPE, OPT_SERVER_ID):
            _append_option(out, code, value)
    out.append(OPT_END)
    return bytes(out)


def _append_option(out: bytearray, code: int, value: bytes) -> None:
    size = len(value)
    if size <= 255:
        out.append(code)
        out.append(size)
        out += value
        return
    # RFC 3396: split anything over 255 bytes into consecutive options with the same code.
    value = bytes(value)
    for i in range(0, size, 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk))) + chunk


def encode_options(options: Mapping[int, bytes]) -> bytes:
    """The options area of a message (53 and 54 first, then in order, END last)."""
    return _encode_options(options)


def encode(packet: DhcpPacket, max_size: int | None = None, *, encoded_options: bytes | None = None) -> bytes:
    """Serialise ``packet``; ``max_size`` (IP datagram bytes, default the client's option 57 or 576).

    ``encoded_options`` is ``encode_options(packet.options)`` when the caller already has it (a server
    reuses the encoded options it sends to every client alike). Raises ``DhcpEncodeError`` rather than
    truncating: a PXE ROM handed half a boot file name fails far more confusingly than a server that logs
    "reply too large".
    """
    limit = max_size if max_size is not None else (packet.client_max_size or DEFAULT_MAX_SIZE)
    if limit < DEFAULT_MAX_SIZE:
        raise DhcpEncodeError(f"max_size {limit} is below the RFC 2131 minimum of {DEFAULT_MAX_SIZE}")
    if not 0 <= packet.hlen <= 16:
        raise DhcpEncodeError(f"bad hlen {packet.hlen}")
    chaddr = bytes(packet.chaddr)
    sname, file = packet.sname, packet.file
    if type(sname) is not bytes or sname.endswith(b"\0"):  # set directly after construction
        sname = _text_field(sname)
    if type(file) is not bytes or file.endswith(b"\0"):
        file = _text_field(file)
    if len(chaddr) > 16 or len(sname) > 64 or len(file) > 128:
        for name, value, size in (("chaddr", chaddr, 16), ("sname", sname, 64), ("file", file, 128)):
            if len(value) > size:
                raise DhcpEncodeError(f"{name} is {len(value)} bytes, the field holds {size}")
    ciaddr, yiaddr, siaddr, giaddr = packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr
    try:
        header = _HEADER.pack(
            packet.op,
            packet.htype,
            packet.hlen,
            packet.hops,
            packet.xid,
            packet.secs,
            packet.flags,
            _ZERO_PACKED if ciaddr is _ZERO else ciaddr.packed,
            _ZERO_PACKED if yiaddr is _ZERO else yiaddr.packed,
            _ZERO_PACKED if siaddr is _ZERO else siaddr.packed,
            _ZERO_PACKED if giaddr is _ZERO else giaddr.packed,
            chaddr,
            sname,
            file,
        )
    except struct.error as exc:
        raise DhcpEncodeError(f"header field out of range: {exc}") from exc
    if encoded_options is None:
        encoded_options = _encode_options(packet.options)
    body = header + MAGIC_COOKIE + encoded_options
    if len(body) > limit - IP_UDP_OVERHEAD:
        raise DhcpEncodeError(
            f"message is {len(body)} bytes, over the {limit - IP_UDP_OVERHEAD}-byte limit of max_size {limit}"
        )
    return body.ljust(BOOTP_MIN_SIZE, b"\0")


# --- option value encoders -------------------------------------------------------------------------


def option_ip(addr: IPv4Address | str) -> bytes:
    return addr.packed if isinstance(addr, IPv4Address) else IPv4Address(addr).packed


def option_ips(addrs: Iterable[IPv4Address | str]) -> bytes:
    return b"".join(IPv4Address(a).packed for a in addrs)


def option_u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} does not fit in 32 bits")
    return value.to_bytes(4, "big")


def option_u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value} does not fit in 16 bits")
    return value.to_bytes(2, "big")


def option_str(value: str) -> bytes:
    """RFC 2132 strings are not NUL-terminated."""
    return value.encode()


def pxe_vendor_option(discovery_control: int = PXE_DISCOVERY_SKIP) -> bytes:
    """Option 43 for a ``PXEClient``: PXE 2.1 sub-option 6, then the END the spec requires."""
    return bytes((PXE_DISCOVERY_CONTROL, 1, discovery_control, OPT_END))


def ipxe_encap_option(no_pxedhcp: bool = True) -> bytes:
    """Option 175 for iPXE: 176 = 1 stops it from waiting for a ProxyDHCP offer that never comes."""
    return bytes((IPXE_NO_PXEDHCP, 1, 1)) if no_pxedhcp else b""


def pxe_reply_options(discovery_control: int = PXE_DISCOVERY_SKIP, ipxe: bool = True) -> dict[int, bytes]:
    """Options a PXE answer must carry: class ``PXEClient`` (else the ROM ignores it), 43, and iPXE's 175."""
    opts = {OPT_VENDOR_CLASS: b"PXEClient", OPT_VENDOR_SPECIFIC: pxe_vendor_option(discovery_control)}
    if ipxe:
        opts[OPT_IPXE_ENCAP] = ipxe_encap_option()
    return opts


# --- replies ---------------------------------------------------------------------------------------


def max_reply_size(request: DhcpPacket) -> int:
    """The client's option 57, never below 576 (smaller values are illegal and mean a broken client)."""
    if OPT_MAX_MESSAGE_SIZE not in request.options:
        return DEFAULT_MAX_SIZE  # the common case, once per reply
    try:
        size = request.max_message_size
    except DhcpDecodeError:
        size = None
    return max(size or DEFAULT_MAX_SIZE, DEFAULT_MAX_SIZE)


def _as_ip(addr: IPv4Address | str) -> IPv4Address:
    return addr if isinstance(addr, IPv4Address) else IPv4Address(addr)  # no str round trip


def reply_to(
    request: DhcpPacket,
    message_type: int,
    yiaddr: IPv4Address | str | None = None,
    server_id: IPv4Address | str | None = None,
    options: Mapping[int, bytes] | None = None,
    *,
    siaddr: IPv4Address | str | None = None,
    sname: bytes | str = b"",
    file: bytes | str = b"",
) -> DhcpPacket:
    """Build the reply skeleton of RFC 2131 table 3 for ``request``.

    xid, flags, giaddr (so a relayed reply goes back through the relay), chaddr and htype/hlen are
    copied; ciaddr only for an ACK; option 82 is echoed last as RFC 3046 §2.2 requires.
    """
    opts: dict[int, bytes] = {OPT_MESSAGE_TYPE: bytes((message_type,))}
    if server_id is not None:
        opts[OPT_SERVER_ID] = option_ip(server_id)
    if options:
        if OPT_MESSAGE_TYPE in options or OPT_SERVER_ID in options:
            options = {code: value for code, value in options.items() if code not in (OPT_MESSAGE_TYPE, OPT_SERVER_ID)}
        opts.update(options)
    relay = request.options.get(OPT_RELAY_AGENT_INFO)
    if relay is not None:
        opts.pop(OPT_RELAY_AGENT_INFO, None)
        opts[OPT_RELAY_AGENT_INFO] = relay
    packet = object.__new__(DhcpPacket)  # every field below is already normalised: skip __init__
    packet.__dict__ = {
        "op": BOOTREPLY,
        "htype": request.htype,
        "hlen": request.hlen,
        "hops": 0,
        "xid": request.xid,
        "secs": 0,
        "flags": request.flags,
        "ciaddr": request.ciaddr if message_type == DHCPACK else _ZERO,
        "yiaddr": _ZERO if yiaddr is None or message_type == DHCPNAK else _as_ip(yiaddr),
        "siaddr": _ZERO if siaddr is None else _as_ip(siaddr),
        "giaddr": request.giaddr,
        "chaddr": request.chaddr if len(request.chaddr) == 16 else bytes(request.chaddr).ljust(16, b"\0"),
        "sname": _text_field(sname) if sname else b"",
        "file": _text_field(file) if file else b"",
        "options": opts,
        "client_max_size": max_reply_size(request),
    }
    return packet


# --- client architectures (RFC 4578 §2.1 + IANA "Processor Architecture Types") ---------------------


class FirmwareKind(NamedTuple):
    firmware: Literal["bios", "uefi"]
    machine: Literal["x86_64", "i386", "aarch64", "arm"]
    http: bool


_ARCHES: dict[int, FirmwareKind] = {
    0: FirmwareKind("bios", "i386", False),  # x86 BIOS: loaders are 16/32-bit (undionly.kpxe)
    6: FirmwareKind("uefi", "i386", False),
    7: FirmwareKind("uefi", "x86_64", False),
    9: FirmwareKind("uefi", "x86_64", False),  # EBC per RFC 4578, but sent by many x64 UEFI ROMs
    10: FirmwareKind("uefi", "arm", False),
    11: FirmwareKind("uefi", "aarch64", False),
    15: FirmwareKind("uefi", "i386", True),
    16: FirmwareKind("uefi", "x86_64", True),
    18: FirmwareKind("uefi", "arm", True),
    19: FirmwareKind("uefi", "aarch64", True),
}


def firmware_kind(arch_code: int) -> FirmwareKind:
    """Map option 93 to (firmware, machine, HTTP boot); ``ValueError`` for codes we cannot boot."""
    try:
        return _ARCHES[arch_code]
    except KeyError:
        raise ValueError(f"unsupported client architecture {arch_code}") from None
