"""The KVM probe with real QEMU: its test guest works, and the probe cleans up after itself."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bramble.compute.qemu.accel import _run_probe, probe_argv, probe_image, probe_kvm

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"),
]


def test_probe_guest_finishes_under_tcg(tmp_path: Path) -> None:
    """The probe program itself is right: when KVM fails the probe, KVM is to blame."""
    bios = tmp_path / "probe.bin"
    bios.write_bytes(probe_image())
    ok, detail = _run_probe(probe_argv(bios, "tcg"), deadline=20)
    assert ok, detail
    assert detail.startswith("test guest finished in ")


def test_probe_reports_qemu_errors(tmp_path: Path) -> None:
    ok, detail = _run_probe(probe_argv(tmp_path / "missing.bin", "tcg"), deadline=20)
    assert not ok
    assert "could not load PC BIOS" in detail


def test_probe_kvm_answers_quickly_and_leaves_no_process(live_qemus: Callable[[str], set[int]]) -> None:
    began = time.monotonic()
    accel, reason = probe_kvm(deadline=3.0)
    elapsed = time.monotonic() - began

    print(f"probe_kvm -> {accel}: {reason} ({elapsed:.1f}s)")  # shown with pytest -s
    assert accel in ("kvm", "tcg")
    assert reason
    assert elapsed < 8  # the deadline plus killing and reaping the probe
    assert not live_qemus("bramble-kvm-probe-")
    assert not list(Path(tempfile.gettempdir()).glob("bramble-kvm-probe-*"))
