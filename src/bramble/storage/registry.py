"""A node's storage drivers, one per pool, built from the settings the control plane sends.

Drivers are made on first use and kept, so an RBD pool has one librados connection per
node however many requests touch it. A spec that changed (new keyring, new timeout)
gets a fresh driver; the old one is closed when the registry closes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from bramble.storage.driver import StorageDriver, StorageError
from bramble.storage.pools import DEFAULT_POOL, PoolSpec


class StorageRegistry:
    """Implements ``bramble.storage.pools.StoragePools``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._drivers: dict[str, tuple[PoolSpec, StorageDriver]] = {}
        self._retired: list[StorageDriver] = []
        # fake pools only: pool name -> the refusal a probe reports (tests of the control plane)
        self.fake_refusals: dict[str, str] = {}

    def adopt(self, pool: PoolSpec, driver: StorageDriver) -> None:
        """Use an already built driver for ``pool`` (the daemon's default pool)."""
        self._drivers[pool.name] = (pool, driver)

    def driver(self, pool: PoolSpec) -> StorageDriver:
        held = self._drivers.get(pool.name)
        if held is not None and held[0] == pool:
            return held[1]
        built = self._build(pool, self._work_dir(pool))
        self._drivers[pool.name] = (pool, built)
        if held is not None:
            self._retired.append(held[1])  # a request may still be using it
        return built

    async def probe(self, pool: PoolSpec) -> None:
        if pool.driver == "fake":
            if pool.name in self.fake_refusals:
                raise StorageError(self.fake_refusals[pool.name])
            return await self._build(pool, self.state_dir).check()
        # A scratch work directory: a refused pool must leave nothing on the node.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".pool-probe-", dir=self.state_dir))
        created = pool.driver == "local" and not Path(self._local_root(pool)).exists()
        try:
            driver = self._build(pool, scratch)
            try:
                await driver.check()
            finally:
                await driver.close()
        except BaseException:
            if created:  # the probe made the directory; a refused pool leaves none
                shutil.rmtree(self._local_root(pool), ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def forget(self, pool: PoolSpec) -> None:
        """Close the pool's driver and remove the node-local files Bramble made for it.

        Only what is Bramble's own and empty goes: an RBD pool's work directory (the QEMU
        conf copy, an empty spool), a local pool's empty ``images``/``disks`` folders and the
        default location ``state_dir/pools/NAME``. A directory the user named stays.
        """
        held = self._drivers.pop(pool.name, None)
        if held is not None:
            await held[1].close()
        if pool.name == DEFAULT_POOL:
            return
        if pool.driver == "rbd":
            shutil.rmtree(self._work_dir(pool), ignore_errors=True)
        elif pool.driver == "local":
            root = self._local_root(pool)
            folders = [root / "images", root / "disks"] + ([root] if pool.path is None else [])
            for folder in folders:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty

    async def close(self) -> None:
        drivers = [driver for _, driver in self._drivers.values()] + self._retired
        self._drivers.clear()
        self._retired.clear()
        for driver in drivers:
            with contextlib.suppress(Exception):
                await driver.close()

    # ------------------------------------------------------------------ building
    def _local_root(self, pool: PoolSpec) -> Path:
        if pool.path:
            return Path(pool.path)
        return self.state_dir if pool.name == DEFAULT_POOL else self.state_dir / "pools" / pool.name

    def _work_dir(self, pool: PoolSpec) -> Path:
        """Node-local files of an RBD pool (kernel/initrd parts, spool, QEMU's client conf)."""
        return self.state_dir / "rbd" if pool.name == DEFAULT_POOL else self.state_dir / "rbd-pools" / pool.name

    def _build(self, pool: PoolSpec, work_dir: Path) -> StorageDriver:
        if pool.driver == "fake":
            from bramble.storage.fake import FakeStorage

            return FakeStorage()
        if pool.driver == "local":
            from bramble.storage.local import LocalStorage

            root = self._local_root(pool)
            try:
                return LocalStorage(root)
            except OSError as exc:
                raise StorageError(f"cannot use {root} for pool {pool.name!r}: {exc.strerror or exc}") from None
        if pool.driver == "rbd":
            from bramble.storage.rbd import RbdStorageDriver

            try:
                return RbdStorageDriver(
                    conf=Path(pool.ceph_conf or "/etc/ceph/ceph.conf"),
                    pool=pool.ceph_pool or "bramble",
                    user=pool.ceph_user or "bramble",
                    keyring=Path(pool.ceph_keyring) if pool.ceph_keyring else None,
                    work_dir=work_dir,
                    op_timeout=pool.timeout_seconds,
                    connect_timeout=pool.timeout_seconds,
                )
            except OSError as exc:
                raise StorageError(f"cannot use {work_dir} for pool {pool.name!r}: {exc.strerror or exc}") from None
        raise StorageError(f"unknown storage driver {pool.driver!r}; use one of local, rbd, fake")
