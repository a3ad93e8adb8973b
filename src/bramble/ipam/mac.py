"""MAC addresses for VM NICs. Pure: the caller passes the addresses already taken and a random source.

Bramble's MACs are ``02:b7:xx:xx:xx:xx``: first octet 0x02 is a unicast, locally administered address
(IEEE 802: bit 1 set, bit 0 clear), so it can never clash with a vendor's burned-in MAC, and ``b7``
marks it as Bramble's. We do not use QEMU's ``52:54:00`` prefix: QEMU gives every NIC without an
explicit MAC ``52:54:00:12:34:56``, and a hand-started guest bridged onto a Bramble network would then
collide with a Bramble NIC. Four random octets (2^32 values) make collisions rare; uniqueness itself
comes from ``taken`` (the NICs in the database, read in the same write transaction as the insert).
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection

__all__ = ["MAC_PREFIX", "MacExhausted", "is_bramble_mac", "new_mac", "normalise_mac"]

MAC_PREFIX = "02:b7"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class MacExhausted(RuntimeError):
    """No free MAC after many random draws: the taken set is implausibly large or the source is broken."""


def normalise_mac(mac: str) -> str:
    """Lower-case, colon-separated; raises ValueError with the input for anything that is not a MAC."""
    text = mac.strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac!r}")
    return text


def is_bramble_mac(mac: str) -> bool:
    return normalise_mac(mac).startswith(MAC_PREFIX + ":")


def new_mac(taken: Collection[str], rng: random.Random | None = None, attempts: int = 64) -> str:
    """A Bramble MAC not in ``taken`` (compared normalised). ``rng`` defaults to the OS's entropy."""
    source = rng if rng is not None else random.SystemRandom()
    used = {normalise_mac(m) for m in taken}
    for _ in range(attempts):
        tail = source.getrandbits(32).to_bytes(4, "big")
        mac = MAC_PREFIX + ":" + ":".join(f"{b:02x}" for b in tail)
        if mac not in used:
            return mac
    raise MacExhausted(f"no unused MAC found in {attempts} draws ({len(used)} taken)")
