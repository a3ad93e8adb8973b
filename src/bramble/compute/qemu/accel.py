"""Decide between KVM and TCG by running a tiny guest, not by looking at /dev/kvm.

On some hosts /dev/kvm opens fine and a guest even executes its first instructions,
yet real guests crawl or hang (broken nested virtualisation: a CPU loop runs about a
thousand times slower than native and the Linux decompressor never finishes). So the
probe boots a 64 KiB firmware image that switches to 32-bit protected mode with paging,
spins 20 million iterations and writes ``K`` to the debug console port 0xE9. A working
KVM does that in milliseconds; TCG in about 0.1 s; a broken KVM misses the deadline.
Nothing is cached: the answer can change with a kernel or hypervisor update.
"""

from __future__ import annotations

import contextlib
import os
import platform
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# Real-mode code at the start of the image (the CPU resets at F000:FFF0 with CS base
# 0xFFFF0000, so image offset N is linear address 0xFFFF0000 + N).
_PROBE_CODE = bytes.fromhex(
    "fa"  # cli
    "6631c0"  # xor eax, eax
    "8ec0"  # mov es, ax
    "66bf00100000"  # mov edi, 0x1000        page directory in RAM
    "66b900040000"  # mov ecx, 1024
    "fc"  # cld
    "66f3ab"  # rep stosd                    clear it
    "2666c7060010e3000000"  # mov dword es:[0x1000], 0x000000e3  4 MiB page at 0 (P|RW|A|D|PS)
    "2666c706fc1fe300c0ff"  # mov dword es:[0x1ffc], 0xffc000e3  4 MiB page at 0xffc00000
    "2e660f01168800"  # lgdt cs:[0x88]
    "0f20e0"  # mov eax, cr4
    "6683c810"  # or eax, 0x10               PSE
    "0f22e0"  # mov cr4, eax
    "66b800100000"  # mov eax, 0x1000
    "0f22d8"  # mov cr3, eax
    "0f20c0"  # mov eax, cr0
    "660d01000080"  # or eax, 0x80000001     PE | PG
    "0f22c0"  # mov cr0, eax
    "66ea5800ffff0800"  # jmp dword 0x08:0xffff0058
    # 0x58: 32-bit code
    "b053"  # mov al, 'S'
    "e6e9"  # out 0xe9, al
    "b9002d3101"  # mov ecx, 20000000
    "49"  # dec ecx
    "75fd"  # jnz -3
    "b04b"  # mov al, 'K'
    "e6e9"  # out 0xe9, al
    "f4"  # hlt
    "ebfd"  # jmp -3
)
# 0x70: GDT (null, flat code, flat data; accessed bits preset so the CPU never writes ROM)
_PROBE_GDT = bytes.fromhex("0000000000000000ffff0000009bcf00ffff00000093cf00")
# 0x88: GDT descriptor: limit 23, base 0xffff0070
_PROBE_GDT_DESC = bytes.fromhex("17007000ffff")
_RESET_JUMP = bytes.fromhex("e90d00")  # at 0xfff0: jmp near 0x0000


def probe_image() -> bytes:
    """The 64 KiB firmware image run by the probe (exposed for tests)."""
    image = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    image[0 : len(_PROBE_CODE)] = _PROBE_CODE
    image[0x70 : 0x70 + len(_PROBE_GDT)] = _PROBE_GDT
    image[0x88 : 0x88 + len(_PROBE_GDT_DESC)] = _PROBE_GDT_DESC
    image[0xFFF0 : 0xFFF0 + len(_RESET_JUMP)] = _RESET_JUMP
    return bytes(image)


def probe_argv(bios: Path, accel: str = "kvm", binary: str = "qemu-system-x86_64") -> list[str]:
    return [
        binary,
        "-no-user-config",
        "-nodefaults",
        "-machine",
        "pc",
        "-accel",
        accel,
        "-m",
        "16",
        "-display",
        "none",
        "-bios",
        str(bios),
        "-chardev",
        "stdio,id=dbg",
        "-device",
        "isa-debugcon,iobase=0xe9,chardev=dbg",
    ]


def _run_probe(argv: list[str], deadline: float) -> tuple[bool, str]:
    """Run the probe guest; (True, detail) when it wrote ``K`` before the deadline."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    seen = err = b""
    open_fds = [out_fd, err_fd]
    try:
        # stop at "K", at qemu's exit, or when KVM reports a crashed guest (it then
        # just pauses the guest, waiting longer would tell nothing new)
        while out_fd in open_fds and b"K" not in seen and b"internal error" not in err:
            left = deadline - (time.monotonic() - started)
            if left <= 0:
                break
            for fd in select.select(open_fds, [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    open_fds.remove(fd)
                elif fd == out_fd:
                    seen += chunk
                else:
                    err += chunk
        elapsed = time.monotonic() - started
    finally:
        proc.kill()  # our own child, by PID
        # a process stuck in the kernel may outlive SIGKILL for a while; nothing more to do
        with contextlib.suppress(subprocess.TimeoutExpired):
            err += proc.communicate(timeout=10)[1]
    if b"K" in seen:
        return True, f"test guest finished in {elapsed:.2f}s"
    why = _stderr_reason(err.decode(errors="replace"))
    if out_fd not in open_fds or "internal error" in why:
        return False, f"test guest failed: {why or 'qemu exited'}"
    progress = "started but did not finish" if b"S" in seen else "produced no output"
    return False, f"test guest {progress} within {deadline:g}s" + (f" ({why})" if why else "")


def _stderr_reason(text: str) -> str:
    """The line of QEMU's stderr that explains a failure (not warnings, not register dumps)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "warning:" not in line]
    for line in lines:
        if "error" in line.lower() or "fail" in line.lower():
            return line
    return lines[0] if lines else ""


def probe_kvm(deadline: float = 3.0) -> tuple[str, str]:
    """Return ("kvm"|"tcg", reason) after really running a guest under KVM."""
    machine = platform.machine()
    if machine not in ("x86_64", "amd64"):
        return "tcg", f"KVM probe not implemented on {machine} hosts"
    if not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not accessible to this user"
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return "tcg", "qemu-system-x86_64 is not installed"
    with tempfile.TemporaryDirectory(prefix="bramble-kvm-probe-") as tmp:
        bios = Path(tmp) / "probe.bin"
        bios.write_bytes(probe_image())
        ok, detail = _run_probe(probe_argv(bios, "kvm", binary), deadline)
    if ok:
        return "kvm", f"KVM works: {detail}"
    return "tcg", f"KVM unusable ({detail}); using TCG"
