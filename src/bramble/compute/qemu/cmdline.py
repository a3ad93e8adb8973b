"""Build the QEMU command line for one VM.

A pure function of the spec, the architecture profile and the runtime paths, so every
architecture's command line can be unit-tested without starting QEMU.

Choices that hold for every architecture:

* ``-nodefaults``: no implicit VGA, NIC, floppy, CD-ROM, serial or monitor, so the
  guest sees exactly the devices listed here, whatever the machine type's defaults.
* ``-daemonize -pidfile``: QEMU outlives the daemon that started it, and the
  launching process exits only after QEMU has initialised, so start-up errors
  (corrupt image, missing kernel) come back synchronously on its stderr.
* The serial console goes to an append-mode log file via ``-serial``; the machine
  turns the first serial backend into its console device (8250 UART, PL011, spapr
  hvc, s390 SCLP), so one recipe serves all architectures.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from bramble.compute.arch import ArchProfile
from bramble.compute.driver import DiskAttachment, VmSpec

UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
DISK_FORMATS = {"qcow2": "qcow2", "raw": "raw", "iso": "raw"}
MEDIA = ("disk", "cdrom")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class RuntimePaths:
    """The files one VM's QEMU process uses, all in ``<runtime_dir>/<vm_id>/``."""

    directory: Path

    @classmethod
    def for_vm(cls, runtime_dir: Path, vm_id: str) -> RuntimePaths:
        return cls(Path(runtime_dir) / vm_id)

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def spec_file(self) -> Path:
        return self.directory / "spec.json"


def socket_too_long(path: Path) -> bool:
    return len(os.fsencode(str(path))) > UNIX_PATH_MAX


def qmp_socket_arg(paths: RuntimePaths) -> str:
    """The QMP socket path as QEMU gets it.

    A unix socket address holds at most 107 bytes, less than a deep state directory
    plus a VM id needs; QEMU then binds the bare file name, relative to its working
    directory, which the driver sets to the VM's directory.
    """
    return paths.qmp_socket.name if socket_too_long(paths.qmp_socket) else str(paths.qmp_socket)


def qemu_opt(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax (a comma is doubled)."""
    return value.replace(",", ",,")


def kernel_append(cmdline: str | None, console: str) -> str:
    """The guest kernel command line, with the profile's console unless the user chose one.

    Without ``console=`` the kernel would log to a device we do not capture.
    """
    text = (cmdline or "").strip()
    if any(word.startswith("console=") for word in text.split()):
        return text
    return f"{text} console={console}".strip()


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


RBD_PREFIX = "rbd:"


def _split_escaped(text: str, separators: str) -> list[tuple[str, str]]:
    """Split at unescaped separators: [(separator before the part, part)], backslash escapes one char."""
    parts: list[tuple[str, str]] = []
    current: list[str] = []
    before = ""
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char in separators:
            parts.append((before, "".join(current)))
            before, current = char, []
        else:
            current.append(char)
    parts.append((before, "".join(current)))
    return parts


def rbd_blockdev(path: str) -> dict[str, str]:
    """QEMU's rbd pseudo-filename ``rbd:pool[/namespace]/image[@snap][:id=user][:conf=file]`` as
    ``-blockdev`` options for the rbd driver (what the rbd storage driver stores as a disk path).

    Only ``id`` and ``conf`` are accepted: QEMU's -blockdev rbd driver has no keyring option,
    and the key itself must never be on a command line; the conf names the keyring.
    """
    fields = _split_escaped(path[len(RBD_PREFIX) :], ":")
    names = _split_escaped(fields[0][1], "/@")
    snapshot = names.pop()[1] if len(names) > 1 and names[-1][0] == "@" else None
    if any(sep == "@" for sep, _ in names) or len(names) not in (2, 3) or not all(part for _, part in names):
        raise ValueError(f"disk {path}: expected rbd:pool[/namespace]/image[@snapshot]")
    options = {"driver": "rbd", "pool": names[0][1], "image": names[-1][1]}
    if len(names) == 3:
        options["namespace"] = names[1][1]
    if snapshot is not None:
        options["snapshot"] = snapshot
    for _, field in fields[1:]:
        key, sep, value = field.partition("=")
        if not sep or key not in ("id", "conf") or not value:
            raise ValueError(f"disk {path}: unsupported rbd option {field!r} (id= and conf= only)")
        options["user" if key == "id" else "conf"] = value
    return options


def disk_blockdev(disk: DiskAttachment, node: str) -> dict[str, object]:
    """The ``-blockdev`` (or QMP ``blockdev-add``) options of one disk: format over file or rbd."""
    fmt = DISK_FORMATS.get(disk.format)
    if fmt is None:
        raise ValueError(f"disk {disk.path}: unsupported format {disk.format!r} (qcow2 or raw)")
    readonly = disk.readonly or disk.media == "cdrom"
    if disk.path.startswith(RBD_PREFIX):
        # opened by QEMU through librbd: no kernel rbd, nbd or device-mapper on the host
        protocol: dict[str, object] = {**rbd_blockdev(disk.path), "read-only": readonly}
        if "snapshot" in protocol and not readonly:
            raise ValueError(f"disk {disk.path}: an RBD snapshot can only be attached read-only")
    else:
        protocol = {"driver": "file", "filename": disk.path, "read-only": readonly}
    if disk.cache_path is not None:
        return _write_through_cache(disk, node, protocol)
    return {"driver": fmt, "node-name": node, "read-only": readonly, "file": protocol}


def _write_through_cache(disk: DiskAttachment, node: str, rbd: dict[str, object]) -> dict[str, object]:
    """An RBD disk behind a local read cache: a ``quorum`` node, ``read-pattern: fifo`` (reads from
    the first child that answers: the local one) and ``vote-threshold: 2`` (a write completes only
    once both children have it, so nothing acknowledged is on this node only).

    The local child is copy-on-read over a qcow2 whose backing is the same RBD image opened
    read-only: a miss is read from Ceph and kept. The qcow2 must be empty when QEMU opens it
    (the caller makes it fresh for every start), since another node may have written the image.
    """
    if not disk.path.startswith(RBD_PREFIX) or disk.readonly or disk.media != "disk" or disk.format != "raw":
        raise ValueError(f"disk {disk.path}: only a writable raw RBD disk can have a write-through cache")
    remote = {"driver": "raw", "file": rbd}
    backing = {"driver": "raw", "read-only": True, "file": {**rbd, "read-only": True}}
    local_file = {"driver": "file", "filename": disk.cache_path}
    local = {"driver": "copy-on-read", "file": {"driver": "qcow2", "file": local_file, "backing": backing}}
    return {
        "driver": "quorum",
        "node-name": node,
        "read-pattern": "fifo",
        "vote-threshold": 2,
        "children": [local, remote],
    }


def _disk_args(spec: VmSpec, profile: ArchProfile) -> list[str]:
    args: list[str] = []
    scsi_bus: str | None = None
    for index, disk in enumerate(spec.disks):
        fmt = DISK_FORMATS.get(disk.format)
        if fmt is None:
            raise ValueError(f"disk {disk.path}: unsupported format {disk.format!r} (qcow2 or raw)")
        if disk.media not in MEDIA:
            raise ValueError(f"disk {disk.path}: unsupported media {disk.media!r} (disk or cdrom)")
        node = disk.node_name or f"disk{index}"
        blockdev = disk_blockdev(disk, node)
        # JSON syntax: paths need no escaping
        args += ["-blockdev", json.dumps(blockdev, separators=(",", ":"))]
        if disk.media == "disk":
            device = f"{profile.disk_bus},drive={node},id={node}-dev"
        elif profile.cdrom_device == "scsi-cd":
            if scsi_bus is None:
                scsi_bus = "scsi0.0"
                args += ["-device", f"{profile.scsi_controller},id=scsi0"]
            device = f"scsi-cd,drive={node},id={node}-dev,bus={scsi_bus}"
        else:
            device = f"{profile.cdrom_device},drive={node},id={node}-dev"
        # firmware boots the disks in spec order; with -kernel QEMU's loader owns bootindex 0
        args += ["-device", device if spec.kernel else f"{device},bootindex={index}"]
    return args


def _nic_args(spec: VmSpec, profile: ArchProfile) -> list[str]:
    """A tap netdev per NIC, opened by name (the agent made it persistent, on its bridge).

    ``script=no,downscript=no``: QEMU must not run /etc/qemu-ifup; the agent owns the tap.
    Without NICs, ``-nic none`` keeps the guest off any network.
    """
    if not spec.nics:
        return ["-nic", "none"]
    args: list[str] = []
    for index, nic in enumerate(spec.nics):
        if not _MAC.match(nic.mac):
            raise ValueError(f"NIC {nic.nic_id}: MAC {nic.mac!r} must be lower-case colon form")
        if not _IFNAME.match(nic.tap):
            raise ValueError(f"NIC {nic.nic_id}: tap {nic.tap!r} is not a valid interface name")
        netdev = f"net{index}"
        args += ["-netdev", f"tap,id={netdev},ifname={nic.tap},script=no,downscript=no"]
        args += ["-device", f"{profile.nic_model},netdev={netdev},mac={nic.mac},id={netdev}-dev"]
    return args


def build_argv(spec: VmSpec, profile: ArchProfile, paths: RuntimePaths, *, accel: str) -> list[str]:
    """The full argv (binary first) that starts ``spec`` as a daemonized QEMU.

    ``accel`` is the accelerator actually used ("kvm" or "tcg"); under KVM the guest
    gets the host CPU model, under TCG the profile's emulated one.
    QEMU must run with the VM's directory as its working directory (see qmp_socket_arg).
    Raises ValueError for a spec QEMU could not run (unknown disk format, ...).
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"unknown accelerator {accel!r} (kvm or tcg)")
    if spec.cpus < 1:
        raise ValueError("a VM needs at least one CPU")
    if spec.memory_mib < 1:
        raise ValueError("a VM needs memory")
    if spec.kernel is None and (spec.initrd or spec.cmdline):
        raise ValueError("an initrd or kernel command line needs a kernel")

    argv = [
        profile.qemu_binary,
        "-name",
        f"guest={qemu_opt(spec.name)}",
    ]
    if _is_uuid(spec.vm_id):
        argv += ["-uuid", spec.vm_id]
    argv += [
        "-no-user-config",
        "-nodefaults",
        "-machine",
        profile.machine,
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else profile.cpu,
        "-smp",
        str(spec.cpus),
        "-m",
        f"{spec.memory_mib}M",
        *profile.firmware,
        *(arg for arg in profile.extra_args if arg != "-nodefaults"),
    ]
    if spec.vnc_display is not None:
        argv += ["-vnc", f"127.0.0.1:{spec.vnc_display}"]
        if profile.display_device:
            argv += ["-device", profile.display_device]
    else:
        argv += ["-display", "none"]
    argv += [
        "-chardev",
        f"file,id=serial0,path={qemu_opt(str(paths.console_log))},append=on",
        "-serial",
        "chardev:serial0",
        "-chardev",
        f"socket,id=qmp,path={qemu_opt(qmp_socket_arg(paths))},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
    ]
    argv += _nic_args(spec, profile)
    argv += _disk_args(spec, profile)
    if spec.kernel is not None:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        argv += ["-append", kernel_append(spec.cmdline, profile.console)]
    argv += ["-daemonize", "-pidfile", str(paths.pidfile)]
    return argv
