"""PXE boot policy: which file a network-booting client gets, decided from its DHCP request alone.

The chain is firmware PXE -> iPXE binary (over TFTP) -> iPXE script (over HTTP). The one rule that
matters most: a client that is already iPXE gets the script, never the iPXE binary again, or it
chainloads itself forever. iPXE is recognised by user class 77 ``iPXE`` or by its option 175.
UEFI HTTP Boot clients (arch 15/16/18/19, vendor class ``HTTPClient``) get a URL instead of a TFTP
file name and must see ``HTTPClient`` echoed in option 60. Clients that are not booting from the
network (no option 93, no PXE/HTTP vendor class, not iPXE) get no boot file at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Literal

from bramble.boot.leases import normalise_mac
from bramble.proto.dhcp import (
    OPT_CLIENT_ARCH,
    OPT_CLIENT_UUID,
    OPT_IPXE_ENCAP,
    OPT_USER_CLASS,
    OPT_VENDOR_CLASS,
    DhcpDecodeError,
    DhcpPacket,
    ipxe_encap_option,
)

__all__ = ["ARCH_NAMES", "BootAnswer", "BootKind", "PxeClient", "PxePolicy", "arch_name"]

# IANA "Processor Architecture Types" (RFC 4578 2.1 and later registrations), as short stable names
# that end up in audit events and inventory files.
ARCH_NAMES: Mapping[int, str] = {
    0: "bios",
    6: "uefi-ia32",
    7: "uefi-x64",
    9: "uefi-x64",  # RFC 4578 says EBC, but x64 UEFI ROMs send 9 as well as 7
    10: "uefi-arm32",
    11: "uefi-arm64",
    15: "uefi-ia32-http",
    16: "uefi-x64-http",
    18: "uefi-arm32-http",
    19: "uefi-arm64-http",
}
_HTTP_ARCHES = frozenset({15, 16, 18, 19})
# The options from_request reads; a request with none of them is an ordinary DHCP client.
_CLIENT_OPTIONS = frozenset((OPT_VENDOR_CLASS, OPT_USER_CLASS, OPT_CLIENT_ARCH, OPT_CLIENT_UUID, OPT_IPXE_ENCAP))

BootKind = Literal["loader", "script", "http-loader"]


def arch_name(code: int | None) -> str | None:
    """Short name for an option 93 code; unknown codes stay visible as ``arch-<n>``."""
    if code is None:
        return None
    return ARCH_NAMES.get(code, f"arch-{code}")


@dataclass(frozen=True)
class PxeClient:
    """What a DHCP request says about the booting client; every field tolerates malformed options."""

    mac: str
    arch: int | None
    arch_name: str | None
    vendor_class: str | None
    user_class: tuple[str, ...]
    is_ipxe: bool
    is_http_client: bool
    uuid: str | None  # option 97, hex of the 16 GUID bytes

    @property
    def is_pxe(self) -> bool:
        """Booting from the network at all: PXE/HTTP vendor class, an arch, or iPXE."""
        vendor = self.vendor_class or ""
        return self.is_ipxe or self.arch is not None or vendor.startswith(("PXEClient", "HTTPClient"))

    @property
    def is_pxe_vendor(self) -> bool:
        """Option 60 starts with ``PXEClient``: the ROM expects ``PXEClient`` and option 43 back."""
        return (self.vendor_class or "").startswith("PXEClient")

    @classmethod
    def from_request(cls, request: DhcpPacket) -> PxeClient:
        options = request.options
        if options.keys().isdisjoint(_CLIENT_OPTIONS):  # most clients: nothing to read
            # Once per packet: skip the frozen dataclass's per-field object.__setattr__ (same fields).
            plain = object.__new__(cls)
            plain.__dict__.update(
                mac=request.chaddr[: request.hlen].hex(":"),
                arch=None,
                arch_name=None,
                vendor_class=None,
                user_class=(),
                is_ipxe=False,
                is_http_client=False,
                uuid=None,
            )
            return plain
        try:
            arch = request.client_arch
        except DhcpDecodeError:
            arch = None
        vendor = request.vendor_class
        try:
            user = request.user_class or ()
        except DhcpDecodeError:
            user = ()
        is_ipxe = "iPXE" in user or OPT_IPXE_ENCAP in request.options
        is_http = (arch in _HTTP_ARCHES) or (vendor or "").startswith("HTTPClient")
        raw_uuid = request.options.get(OPT_CLIENT_UUID)
        uuid = raw_uuid[1:].hex() if raw_uuid is not None and len(raw_uuid) == 17 and raw_uuid[0] == 0 else None
        return cls(
            mac=request.mac,
            arch=arch,
            arch_name=arch_name(arch),
            vendor_class=vendor,
            user_class=tuple(user),
            is_ipxe=is_ipxe,
            is_http_client=is_http,
            uuid=uuid,
        )


@dataclass(frozen=True)
class BootAnswer:
    """The boot part of a DHCP reply: siaddr, the BOOTP ``file`` field (name or URL), extra options."""

    next_server: IPv4Address
    file: str
    kind: BootKind
    options: Mapping[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PxePolicy:
    """Boot-file choice for one provisioning interface.

    Loader names are paths relative to the TFTP root (and to ``{http_base}/files/`` for HTTP Boot).
    A loader set to None means that architecture gets no answer (logged by the caller as no boot file).
    """

    tftp_server: IPv4Address
    http_base: str  # e.g. "http://10.99.0.1:8471", no trailing slash needed
    bios_loader: str | None = "undionly.kpxe"
    uefi_x64_loader: str | None = "snponly.efi"
    uefi_ia32_loader: str | None = "snponly-ia32.efi"
    uefi_arm64_loader: str | None = "snponly-arm64.efi"
    http_loader: str | None = "ipxe.efi"  # x64 UEFI HTTP Boot; fetched over HTTP from /files/
    http_arm64_loader: str | None = "ipxe-arm64.efi"
    script_path: str = "/boot/{mac}.ipxe"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tftp_server", IPv4Address(self.tftp_server))
        object.__setattr__(self, "http_base", self.http_base.rstrip("/"))
        if not self.http_base.startswith(("http://", "https://")):
            raise ValueError(f"http_base {self.http_base!r} is not an http:// URL")
        for name in ("bios_loader", "uefi_x64_loader", "uefi_ia32_loader", "uefi_arm64_loader"):
            loader = getattr(self, name)
            if loader is not None and (loader.endswith(".ipxe") or "://" in loader or len(loader) > 127):
                # A firmware client given a script or URL cannot run it and retries forever.
                raise ValueError(f"{name} {loader!r} must be an iPXE binary name relative to the TFTP root")
        if "{mac}" not in self.script_path:
            raise ValueError("script_path must contain {mac}")

    def script_url(self, mac: str) -> str:
        return self.http_base + self.script_path.format(mac=normalise_mac(mac))

    def choose(self, client: PxeClient) -> BootAnswer | None:
        """The boot answer for ``client``; None for non-PXE clients and architectures we have no loader for."""
        if client.is_ipxe:
            # iPXE gets its script over HTTP, and 175.176 so it does not wait ~3 s for a ProxyDHCP offer.
            return BootAnswer(
                self.tftp_server,
                self.script_url(client.mac),
                "script",
                {OPT_IPXE_ENCAP: ipxe_encap_option()},
            )
        if not client.is_pxe:
            return None
        if client.is_http_client:
            loader = self.http_arm64_loader if client.arch in (18, 19) else self.http_loader
            if client.arch in (15,) or loader is None:
                return None
            url = f"{self.http_base}/files/{loader}"
            # UEFI HTTP Boot ignores an offer whose option 60 is not HTTPClient.
            return BootAnswer(self.tftp_server, url, "http-loader", {OPT_VENDOR_CLASS: b"HTTPClient"})
        loader = {
            0: self.bios_loader,
            6: self.uefi_ia32_loader,
            7: self.uefi_x64_loader,
            9: self.uefi_x64_loader,
            11: self.uefi_arm64_loader,
        }.get(client.arch if client.arch is not None else 0)
        if loader is None:
            return None
        return BootAnswer(self.tftp_server, loader, "loader")
