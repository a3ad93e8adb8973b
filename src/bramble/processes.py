"""Finding our own long-lived child processes again (QEMU, qemu-storage-daemon) by PID, safely.

A PID from a pidfile may have been reused by an unrelated process since; a pidfd pins the process,
and its command line tells whether it is ours. Used by the compute and storage drivers, so it imports
nothing of Bramble.
"""

from __future__ import annotations

import os
import select
from pathlib import Path


def pidfd_exited(pidfd: int) -> bool:
    """True once the process behind the pidfd has terminated (pidfds poll readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def open_verified(pid: int, program: bytes, needle: bytes) -> int | None:
    """A pidfd for ``pid`` if it is a live ``program`` (argv[0]'s base name starts with it) with an
    argument containing ``needle``, else None.

    The pidfd is opened before /proc is read and liveness is re-checked afterwards, so the command
    line checked is that of the process the pidfd refers to.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # ProcessLookupError included
        return None
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        os.close(pidfd)
        return None
    ours = bool(args) and os.path.basename(args[0]).startswith(program) and any(needle in arg for arg in args)
    if not ours or pidfd_exited(pidfd):
        os.close(pidfd)
        return None
    return pidfd
