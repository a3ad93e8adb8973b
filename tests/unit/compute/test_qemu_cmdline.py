"""The QEMU command line for every architecture profile, without starting QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bramble.compute.arch import ARCH_PROFILES, ArchProfile
from bramble.compute.driver import DiskAttachment, VmSpec
from bramble.compute.qemu.cmdline import (
    RuntimePaths,
    build_argv,
    kernel_append,
    qemu_opt,
    qmp_socket_arg,
)

VM_ID = "6f1c2a3e-8d4b-4e5f-9a0b-1c2d3e4f5a6b"
PATHS = RuntimePaths.for_vm(Path("/run/bramble/vms"), VM_ID)
PROFILES = list(ARCH_PROFILES.values())


def spec_for(profile: ArchProfile, **overrides: object) -> VmSpec:
    values: dict[str, object] = {
        "vm_id": VM_ID,
        "name": "web-1",
        "arch": profile.name,
        "cpus": 2,
        "memory_mib": max(256, profile.min_memory_mib),
    }
    values.update(overrides)
    return VmSpec(**values)  # type: ignore[arg-type]


def option(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def one(argv: list[str], flag: str) -> str:
    values = option(argv, flag)
    assert len(values) == 1, f"{flag}: {values}"
    return values[0]


def blockdevs(argv: list[str]) -> list[dict]:
    return [json.loads(v) for v in option(argv, "-blockdev")]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_base_command_line_for_every_profile(profile: ArchProfile) -> None:
    argv = build_argv(spec_for(profile), profile, PATHS, accel="tcg")

    assert argv[0] == profile.qemu_binary
    assert one(argv, "-name") == "guest=web-1"
    assert one(argv, "-uuid") == VM_ID
    assert one(argv, "-machine") == profile.machine
    assert one(argv, "-accel") == "tcg"
    assert one(argv, "-cpu") == profile.cpu
    assert one(argv, "-smp") == "2"
    assert one(argv, "-m") == f"{max(256, profile.min_memory_mib)}M"
    assert argv.count("-nodefaults") == 1
    assert "-no-user-config" in argv
    assert one(argv, "-display") == "none"
    assert "-vnc" not in argv
    assert one(argv, "-nic") == "none"
    # serial console to an append-mode log file, on the machine's first serial port
    assert one(argv, "-serial") == "chardev:serial0"
    chardevs = option(argv, "-chardev")
    assert f"file,id=serial0,path={PATHS.console_log},append=on" in chardevs
    # QMP on a unix socket in the VM's directory
    assert f"socket,id=qmp,path={PATHS.qmp_socket},server=on,wait=off" in chardevs
    assert one(argv, "-mon") == "chardev=qmp,mode=control"
    # daemonized, so QEMU survives the daemon and start-up errors come back synchronously
    assert "-daemonize" in argv
    assert one(argv, "-pidfile") == str(PATHS.pidfile)
    assert "-kernel" not in argv and "-append" not in argv
    # the runtime directory (with the vm id) is in the command line: adopt() verifies it
    assert any(VM_ID in arg for arg in argv)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_kvm_uses_the_host_cpu(profile: ArchProfile) -> None:
    argv = build_argv(spec_for(profile, accel="kvm"), profile, PATHS, accel="kvm")
    assert one(argv, "-accel") == "kvm"
    assert one(argv, "-cpu") == "host"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_firmware_and_extra_args_are_passed(profile: ArchProfile) -> None:
    argv = build_argv(spec_for(profile), profile, PATHS, accel="tcg")
    joined = " ".join(argv)
    if profile.firmware:
        assert " ".join(profile.firmware) in joined
    for arg in profile.extra_args:
        assert arg in argv


def test_riscv_gets_opensbi_and_ppc_stays_nodefaults() -> None:
    riscv = build_argv(spec_for(ARCH_PROFILES["riscv64"]), ARCH_PROFILES["riscv64"], PATHS, accel="tcg")
    assert one(riscv, "-bios") == "default"
    ppc = build_argv(spec_for(ARCH_PROFILES["ppc64le"]), ARCH_PROFILES["ppc64le"], PATHS, accel="tcg")
    assert ppc.count("-nodefaults") == 1


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_kernel_boot_adds_the_profile_console(profile: ArchProfile) -> None:
    spec = spec_for(profile, kernel="/img/vmlinuz", initrd="/img/initrd.gz", cmdline="quiet panic=-1")
    argv = build_argv(spec, profile, PATHS, accel="tcg")
    assert one(argv, "-kernel") == "/img/vmlinuz"
    assert one(argv, "-initrd") == "/img/initrd.gz"
    assert one(argv, "-append") == f"quiet panic=-1 console={profile.console}"


def test_kernel_without_cmdline_or_initrd() -> None:
    profile = ARCH_PROFILES["aarch64"]
    argv = build_argv(spec_for(profile, kernel="/k"), profile, PATHS, accel="tcg")
    assert one(argv, "-append") == "console=ttyAMA0"
    assert "-initrd" not in argv


def test_user_console_is_kept() -> None:
    assert kernel_append("console=tty0 quiet", "ttyS0") == "console=tty0 quiet"
    assert kernel_append("root=/dev/vda", "hvc0") == "root=/dev/vda console=hvc0"
    assert kernel_append(None, "ttysclp0") == "console=ttysclp0"
    assert kernel_append("  ", "ttyS0") == "console=ttyS0"
    # a word that merely contains "console=" is not a console setting
    assert kernel_append("xconsole=1", "ttyS0") == "xconsole=1 console=ttyS0"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_disks_use_blockdev_and_the_profile_bus(profile: ArchProfile) -> None:
    disks = (
        DiskAttachment("/d/root.qcow2"),
        DiskAttachment("/d/data.img", format="raw", readonly=True),
    )
    argv = build_argv(spec_for(profile, disks=disks), profile, PATHS, accel="tcg")

    nodes = blockdevs(argv)
    assert nodes == [
        {
            "driver": "qcow2",
            "node-name": "disk0",
            "read-only": False,
            "file": {"driver": "file", "filename": "/d/root.qcow2", "read-only": False},
        },
        {
            "driver": "raw",
            "node-name": "disk1",
            "read-only": True,
            "file": {"driver": "file", "filename": "/d/data.img", "read-only": True},
        },
    ]
    devices = option(argv, "-device")
    assert f"{profile.disk_bus},drive=disk0,id=disk0-dev,bootindex=0" in devices
    assert f"{profile.disk_bus},drive=disk1,id=disk1-dev,bootindex=1" in devices
    assert "-drive" not in argv


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_cdroms_use_the_profile_device(profile: ArchProfile) -> None:
    disks = (
        DiskAttachment("/d/install.iso", format="iso", media="cdrom"),
        DiskAttachment("/d/drivers.iso", format="raw", media="cdrom"),
    )
    argv = build_argv(spec_for(profile, disks=disks), profile, PATHS, accel="tcg")

    for node in blockdevs(argv):
        assert node["driver"] == "raw"
        assert node["read-only"] is True and node["file"]["read-only"] is True
    devices = option(argv, "-device")
    if profile.cdrom_device == "scsi-cd":
        # exactly one controller, both drives on it
        assert devices.count(f"{profile.scsi_controller},id=scsi0") == 1
        assert "scsi-cd,drive=disk0,id=disk0-dev,bus=scsi0.0,bootindex=0" in devices
        assert "scsi-cd,drive=disk1,id=disk1-dev,bus=scsi0.0,bootindex=1" in devices
    else:
        assert not any("scsi" in d for d in devices)
        assert f"{profile.cdrom_device},drive=disk0,id=disk0-dev,bootindex=0" in devices


def test_s390x_uses_ccw_devices() -> None:
    profile = ARCH_PROFILES["s390x"]
    disks = (DiskAttachment("/d/a.qcow2"), DiskAttachment("/d/b.iso", format="iso", media="cdrom"))
    devices = option(build_argv(spec_for(profile, disks=disks), profile, PATHS, accel="tcg"), "-device")
    assert devices[0].startswith("virtio-blk-ccw,")
    assert "virtio-scsi-ccw,id=scsi0" in devices


def test_no_bootindex_with_a_kernel() -> None:
    """With -kernel, QEMU's own loader takes bootindex 0 on x86: ours would clash."""
    profile = ARCH_PROFILES["x86_64"]
    spec = spec_for(profile, kernel="/k", disks=(DiskAttachment("/d/a.qcow2"),))
    devices = option(build_argv(spec, profile, PATHS, accel="tcg"), "-device")
    assert devices == ["virtio-blk-pci,drive=disk0,id=disk0-dev"]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_vnc_on_localhost_with_a_display_device(profile: ArchProfile) -> None:
    argv = build_argv(spec_for(profile, vnc_display=7), profile, PATHS, accel="tcg")
    assert one(argv, "-vnc") == "127.0.0.1:7"
    assert "-display" not in argv
    if profile.display_device:
        assert profile.display_device in option(argv, "-device")


def test_commas_are_escaped_in_qemu_options() -> None:
    assert qemu_opt("a,b,,c") == "a,,b,,,,c"
    profile = ARCH_PROFILES["x86_64"]
    paths = RuntimePaths.for_vm(Path("/srv/odd,dir"), VM_ID)
    argv = build_argv(spec_for(profile, name="a,b"), profile, paths, accel="tcg")
    assert one(argv, "-name") == "guest=a,,b"
    assert f"file,id=serial0,path=/srv/odd,,dir/{VM_ID}/console.log,append=on" in option(argv, "-chardev")


def test_paths_in_json_blockdev_need_no_escaping() -> None:
    profile = ARCH_PROFILES["x86_64"]
    spec = spec_for(profile, disks=(DiskAttachment('/d/we,ird "name".qcow2'),))
    [node] = blockdevs(build_argv(spec, profile, PATHS, accel="tcg"))
    assert node["file"]["filename"] == '/d/we,ird "name".qcow2'


def test_non_uuid_vm_ids_get_no_uuid() -> None:
    profile = ARCH_PROFILES["x86_64"]
    argv = build_argv(spec_for(profile, vm_id="vm-7"), profile, PATHS, accel="tcg")
    assert "-uuid" not in argv


def test_long_runtime_paths_bind_qmp_relative_to_the_vm_dir() -> None:
    """sun_path holds 107 bytes; deep state dirs plus a uuid need more."""
    deep = RuntimePaths.for_vm(Path("/tmp/" + "x" * 80), VM_ID)
    assert qmp_socket_arg(deep) == "qmp.sock"
    assert qmp_socket_arg(PATHS) == str(PATHS.qmp_socket)
    argv = build_argv(spec_for(ARCH_PROFILES["x86_64"]), ARCH_PROFILES["x86_64"], deep, accel="tcg")
    assert "socket,id=qmp,path=qmp.sock,server=on,wait=off" in option(argv, "-chardev")
    assert one(argv, "-pidfile") == str(deep.pidfile)  # other paths stay absolute


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"disks": (DiskAttachment("/d/x.vmdk", format="vmdk"),)}, "unsupported format"),
        ({"disks": (DiskAttachment("/d/x.img", format="raw", media="floppy"),)}, "unsupported media"),
        ({"initrd": "/i"}, "needs a kernel"),
        ({"cmdline": "quiet"}, "needs a kernel"),
        ({"cpus": 0}, "CPU"),
        ({"memory_mib": 0}, "memory"),
    ],
)
def test_invalid_specs(overrides: dict, message: str) -> None:
    profile = ARCH_PROFILES["x86_64"]
    with pytest.raises(ValueError, match=message):
        build_argv(spec_for(profile, **overrides), profile, PATHS, accel="tcg")


def test_unknown_accelerator() -> None:
    profile = ARCH_PROFILES["x86_64"]
    with pytest.raises(ValueError, match="accelerator"):
        build_argv(spec_for(profile), profile, PATHS, accel="hvf")


def test_runtime_paths() -> None:
    assert PATHS.directory == Path(f"/run/bramble/vms/{VM_ID}")
    assert PATHS.qmp_socket.name == "qmp.sock"
    assert PATHS.pidfile.name == "qemu.pid"
    assert PATHS.console_log.name == "console.log"
    assert PATHS.spec_file.name == "spec.json"
