"""The KVM probe's decisions that need no QEMU: host checks and the probe image."""

from __future__ import annotations

import os

import pytest

from bramble.compute.qemu import accel
from bramble.compute.qemu.accel import probe_image, probe_kvm


def test_probe_image_is_a_64k_bios_with_a_reset_jump() -> None:
    image = probe_image()
    assert len(image) == 0x10000
    assert image[0xFFF0:0xFFF3] == bytes.fromhex("e90d00")  # jmp near 0x0000 (wraps)
    assert image[0] == 0xFA  # cli: the code starts at offset 0
    assert b"\xe6\xe9" in image[:0x70]  # out 0xe9, al: the debug console port
    assert image[0x88:0x8E] == bytes.fromhex("17007000ffff")  # GDT descriptor -> 0xffff0070


def test_non_x86_hosts_use_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel.platform, "machine", lambda: "aarch64")
    assert probe_kvm() == ("tcg", "KVM probe not implemented on aarch64 hosts")


def test_no_dev_kvm_means_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(accel.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(accel.os.path, "exists", lambda p: False if p == "/dev/kvm" else real_exists(p))
    assert probe_kvm() == ("tcg", "no /dev/kvm")


def test_missing_qemu_means_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel.os, "access", lambda p, mode: True)
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    assert probe_kvm() == ("tcg", "qemu-system-x86_64 is not installed")


def test_stderr_reason_skips_warnings_and_register_dumps() -> None:
    text = (
        "qemu-system-x86_64: warning: host doesn't support requested feature\n"
        "KVM internal error. Suberror: 1\n"
        "EAX=00000000 EBX=00000000\n"
    )
    assert accel._stderr_reason(text) == "KVM internal error. Suberror: 1"
    assert accel._stderr_reason("qemu: could not load PC BIOS 'x'\n") == "qemu: could not load PC BIOS 'x'"
    assert accel._stderr_reason("") == ""
