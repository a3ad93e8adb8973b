"""Helpers for tests that run real QEMU: find our processes, wait with deadlines, build guests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
GUEST_CACHE = Path(os.environ.get("BRAMBLE_GUEST_CACHE", "/var/cache/bramble/guests"))
GUEST_ARCHES = ("x86_64", "aarch64")
QEMU_BINARIES = ("qemu-system-x86_64", "qemu-system-aarch64", "qemu-img")
MARKER = "BRAMBLE-GUEST-UP"

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie is dead for our purposes."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def qemu_pids(text: str | Path) -> set[int]:
    """Live QEMU processes whose command line contains ``text`` (a vm id or a directory)."""
    needle = str(text).encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_qemu = os.path.basename(argv[0]).startswith(b"qemu-system")
        if is_qemu and any(needle in a for a in argv) and pid_alive(int(proc.name)):
            found.add(int(proc.name))
    return found


def wait_for(predicate: Callable[[], T | None], deadline: float, what: str, interval: float = 0.1) -> T:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(interval)


def build_guests() -> dict[str, Path]:
    """Tiny x86_64 and aarch64 guests, built (or found up to date) in the guest cache."""
    missing = [b for b in QEMU_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"QEMU not installed ({', '.join(missing)}); run make test-deps")
    built = {}
    for arch in GUEST_ARCHES:
        target = GUEST_CACHE / arch
        result = subprocess.run(
            [str(REPO / "scripts" / "build-guest.sh"), arch, str(target)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"build-guest.sh {arch} failed:\n{result.stdout}\n{result.stderr}")
        built[arch] = target
    return built
