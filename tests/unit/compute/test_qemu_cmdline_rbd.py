"""RBD disks on the QEMU command line: librbd through -blockdev, no secret in argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bramble.compute.arch import ARCH_PROFILES
from bramble.compute.driver import DiskAttachment, VmSpec
from bramble.compute.qemu.cmdline import RuntimePaths, build_argv, rbd_blockdev
from bramble.storage.rbd import rbd_reference

PATHS = RuntimePaths.for_vm(Path("/run/bramble/vms"), "vm1")
X86 = ARCH_PROFILES["x86_64"]


def blockdevs(argv: list[str]) -> list[dict[str, object]]:
    return [json.loads(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg == "-blockdev"]


def spec(*disks: DiskAttachment) -> VmSpec:
    return VmSpec(vm_id="vm1", name="web", arch="x86_64", cpus=1, memory_mib=256, disks=disks)


def test_rbd_disk_is_opened_by_qemu_through_librbd() -> None:
    path = "rbd:vms/disk-web:id=bramble:conf=/etc/ceph/bramble.conf"
    argv = build_argv(spec(DiskAttachment(path, format="raw")), X86, PATHS, accel="tcg")
    assert blockdevs(argv) == [
        {
            "driver": "raw",
            "node-name": "disk0",
            "read-only": False,
            "file": {
                "driver": "rbd",
                "pool": "vms",
                "image": "disk-web",
                "user": "bramble",
                "conf": "/etc/ceph/bramble.conf",
                "read-only": False,
            },
        }
    ]
    assert "-device" in argv and "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=0" in argv
    assert not any("key" in arg for arg in argv)


def test_rbd_reference_round_trips_with_escapes() -> None:
    odd_conf = "/srv/ceph:prod/@conf\\dir/ceph.conf"
    path = rbd_reference("pool-1", "img-x", user="bramble", conf=odd_conf, snapshot="base")
    assert rbd_blockdev(path) == {
        "driver": "rbd",
        "pool": "pool-1",
        "image": "img-x",
        "snapshot": "base",
        "user": "bramble",
        "conf": odd_conf,
    }


def test_rbd_namespace_and_defaults() -> None:
    assert rbd_blockdev("rbd:pool/tenant/image") == {
        "driver": "rbd",
        "pool": "pool",
        "namespace": "tenant",
        "image": "image",
    }


def test_rbd_cdrom_snapshot_is_read_only() -> None:
    cdrom = DiskAttachment("rbd:isos/img-debian@base:id=bramble", format="raw", media="cdrom")
    (dev,) = blockdevs(build_argv(spec(cdrom), X86, PATHS, accel="tcg"))
    assert dev["read-only"] is True
    assert dev["file"] == {
        "driver": "rbd",
        "pool": "isos",
        "image": "img-debian",
        "snapshot": "base",
        "user": "bramble",
        "read-only": True,
    }


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("rbd:justapool", "expected rbd:pool"),
        ("rbd:pool/", "expected rbd:pool"),
        ("rbd:a/b/c/d", "expected rbd:pool"),
        ("rbd:pool@snap/image", "expected rbd:pool"),
        ("rbd:pool/image:keyring=/etc/ceph/keyring", "unsupported rbd option 'keyring="),
        ("rbd:pool/image:key=AQBsecret", "unsupported rbd option"),
        ("rbd:pool/image:id", "unsupported rbd option"),
    ],
)
def test_bad_rbd_paths_are_refused(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_argv(spec(DiskAttachment(path, format="raw")), X86, PATHS, accel="tcg")


def test_writable_rbd_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="read-only"):
        build_argv(spec(DiskAttachment("rbd:p/i@s", format="raw")), X86, PATHS, accel="tcg")
