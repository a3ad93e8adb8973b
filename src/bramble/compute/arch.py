"""Architecture profiles: one table entry per guest architecture.

Adding an architecture means adding a row, not a branch in code. Values come from
boots measured on Debian 12's QEMU 7.2 under TCG (see docs/compute.md for the traps).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArchProfile:
    name: str  # the name users type (uname -m style)
    qemu_binary: str
    machine: str
    cpu: str  # CPU model under TCG; KVM uses "host"
    console: str  # the guest's console device for the kernel command line
    nic_model: str
    disk_bus: str  # the virtio-blk (or other) device model
    cdrom_device: str
    min_memory_mib: int
    firmware: tuple[str, ...] = ()  # extra args that choose firmware (-bios ...)
    extra_args: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    debian_arch: str = ""
    uefi_code: str | None = None  # pflash firmware for UEFI boot, when the arch has one
    kvm_capable_hosts: tuple[str, ...] = field(default=())
    scsi_controller: str = "virtio-scsi-pci"  # holds scsi-cd drives
    display_device: str | None = None  # added only with VNC (we run -nodefaults)


ARCH_PROFILES: dict[str, ArchProfile] = {
    p.name: p
    for p in (
        ArchProfile(
            name="x86_64",
            qemu_binary="qemu-system-x86_64",
            machine="pc",
            cpu="qemu64",
            console="ttyS0",
            nic_model="virtio-net-pci",
            disk_bus="virtio-blk-pci",
            cdrom_device="ide-cd",
            min_memory_mib=64,
            aliases=("amd64", "x86-64"),
            debian_arch="amd64",
            uefi_code="/usr/share/OVMF/OVMF_CODE_4M.fd",
            kvm_capable_hosts=("x86_64",),
            display_device="VGA",
        ),
        ArchProfile(
            name="aarch64",
            qemu_binary="qemu-system-aarch64",
            machine="virt",
            cpu="cortex-a57",
            console="ttyAMA0",
            nic_model="virtio-net-pci",
            disk_bus="virtio-blk-pci",
            cdrom_device="scsi-cd",
            min_memory_mib=128,
            aliases=("arm64",),
            debian_arch="arm64",
            uefi_code="/usr/share/AAVMF/AAVMF_CODE.fd",
            kvm_capable_hosts=("aarch64",),
            display_device="virtio-gpu-pci",
        ),
        ArchProfile(
            name="armv7",
            qemu_binary="qemu-system-arm",
            machine="virt",
            cpu="cortex-a15",
            console="ttyAMA0",
            nic_model="virtio-net-pci",
            disk_bus="virtio-blk-pci",
            cdrom_device="scsi-cd",
            min_memory_mib=128,
            aliases=("armhf", "armv7l", "arm"),
            debian_arch="armhf",
            display_device="virtio-gpu-pci",
        ),
        ArchProfile(
            name="riscv64",
            qemu_binary="qemu-system-riscv64",
            machine="virt",
            cpu="rv64",
            console="ttyS0",
            nic_model="virtio-net-pci",
            disk_bus="virtio-blk-pci",
            cdrom_device="scsi-cd",
            min_memory_mib=128,
            firmware=("-bios", "default"),  # OpenSBI bundled with qemu-system-data
            debian_arch="riscv64",
            display_device="virtio-gpu-pci",
        ),
        ArchProfile(
            name="mips",
            qemu_binary="qemu-system-mipsel",
            machine="malta",
            cpu="24Kf",
            console="ttyS0",
            nic_model="pcnet",
            disk_bus="virtio-blk-pci",
            cdrom_device="ide-cd",
            min_memory_mib=64,
            aliases=("mipsel",),
            debian_arch="mipsel",
            display_device="cirrus-vga",
        ),
        ArchProfile(
            name="mips64el",
            qemu_binary="qemu-system-mips64el",
            machine="malta",
            cpu="5KEc",  # the default 5Kf (MIPS64R1) hangs silently with Debian's kernel
            console="ttyS0",
            nic_model="pcnet",
            disk_bus="virtio-blk-pci",
            cdrom_device="ide-cd",
            min_memory_mib=128,
            aliases=("mips64",),
            debian_arch="mips64el",
            display_device="cirrus-vga",
        ),
        ArchProfile(
            name="ppc64le",
            qemu_binary="qemu-system-ppc64",
            # x-vof: tiny Virtual Open Firmware instead of SLOF (3 s faster); caps silence TCG warnings
            machine="pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off",
            cpu="POWER9",
            console="hvc0",
            nic_model="spapr-vlan",
            disk_bus="virtio-blk-pci",
            cdrom_device="scsi-cd",
            min_memory_mib=512,
            extra_args=("-nodefaults",),  # no VGA/USB for firmware to scan
            aliases=("ppc64el",),
            debian_arch="ppc64el",
            display_device="VGA",
        ),
        ArchProfile(
            name="s390x",
            qemu_binary="qemu-system-s390x",
            machine="s390-ccw-virtio",
            cpu="qemu",
            console="ttysclp0",
            nic_model="virtio-net-ccw",
            disk_bus="virtio-blk-ccw",
            cdrom_device="scsi-cd",
            min_memory_mib=256,
            debian_arch="s390x",
            scsi_controller="virtio-scsi-ccw",
            display_device="virtio-gpu-ccw",
        ),
    )
}

_ALIASES = {alias: p.name for p in ARCH_PROFILES.values() for alias in (p.name, *p.aliases)}


class UnknownArch(ValueError):
    pass


def canonical_arch(name: str) -> str:
    """Map any accepted spelling (amd64, arm64, ppc64el...) to the profile name."""
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(ARCH_PROFILES))
        raise UnknownArch(f"unknown architecture {name!r}; known: {known}") from None


def get_profile(name: str) -> ArchProfile:
    return ARCH_PROFILES[canonical_arch(name)]


def host_arch() -> str:
    """The architecture of this machine as a profile name."""
    return canonical_arch(platform.machine())
