"""Keeping the file servers (TFTP, HTTP boot) inside their root, also against a tree that changes under them.

Checking a resolved path and then opening it leaves a window: a directory on the way can be swapped
for a symlink in between, and the open follows it out of the root. So the servers open first and then
ask the kernel what they opened (``/proc/self/fd``), and serve from that descriptor only.
"""

from __future__ import annotations

import os
from pathlib import Path


def opened_below(fd: int, root: Path) -> bool:
    """Does the open file ``fd`` lie below ``root`` (a resolved path)? False when that cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(root)
    except OSError:
        return False
