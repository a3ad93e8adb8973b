"""Storage pools as the drivers see them: plain settings in, a driver per pool out.

The control plane stores pools in its database and hands their settings (a ``PoolSpec``)
along with every request that touches a disk or an image; a node turns a spec into a
driver through a ``StoragePools`` registry, which keeps one driver (for RBD: one librados
connection) per pool. Nothing here does I/O, so core may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from bramble.storage.driver import PoolUsage, StorageDriver

__all__ = ["DEFAULT_POOL", "POOL_DRIVERS", "PoolSpec", "PoolUsage", "StoragePools"]

PoolDriver = Literal["local", "rbd", "fake"]
POOL_DRIVERS: tuple[str, ...] = ("local", "rbd", "fake")
DEFAULT_POOL = "default"


@dataclass(frozen=True)
class PoolSpec:
    """Everything a node needs to open a pool; ``None`` fields take the driver's defaults."""

    name: str
    driver: str  # local | rbd | fake
    path: str | None = None  # local: the directory holding images/ and disks/
    ceph_conf: str | None = None
    ceph_pool: str | None = None
    ceph_user: str | None = None  # without "client."
    ceph_keyring: str | None = None
    timeout_seconds: int = 15
    # rbd: new VMs' disks as local overlays on the node cache tier unless `vm create` says otherwise
    cache: str = "off"  # off | on
    precache_gib: float = 0.0  # read the first N GiB of the image into the cache when a cached VM starts


class StoragePools(Protocol):
    """A node's drivers, one per pool, built lazily from the specs the control plane sends."""

    def driver(self, pool: PoolSpec) -> StorageDriver:
        """The pool's driver; built on first use, rebuilt when the spec changed."""

    async def probe(self, pool: PoolSpec) -> None:
        """Open the pool with a throwaway driver (nothing cached, nothing left on the node).

        Raises StorageError with the reason when the pool cannot be used: wrong key,
        missing Ceph pool, cluster unreachable within the pool's timeout, bad path.
        """

    async def forget(self, pool: PoolSpec) -> None:
        """Close and drop the driver of a deleted pool, and its empty node-local folders."""
