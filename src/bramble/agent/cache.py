"""The agent's side of the node cache tier (``storage/cache.py``): what happens around a VM's life.

* create: a VM with the cache on gets a local overlay on its image's cache instead of an RBD
  clone (nothing per VM in Ceph);
* start: the image's cache owner must run before QEMU opens the overlay (also after a node
  reboot); then, if configured, the first N bytes of the image are pre-cached in the background;
* stop: the VM's pre-cache reader is cancelled; owners no running VM needs are stopped by PID
  (their cache files stay, so the next start is warm);
* delete: the overlay and with it the VM's local writes are removed;
* drop (``vm cache drop``; later, the step before a live migration): the VM's data is moved
  into an RBD clone of its image, running or not, and the overlay is removed, so nothing of
  the VM is left only on this node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from bramble.compute.driver import ComputeDriver, ComputeError, DiskAttachment, PowerState, VmSpec
from bramble.storage.cache import CacheError, ImageCache
from bramble.storage.driver import StorageError, StoredDisk, StoredImage
from bramble.storage.rbd import RbdStorageDriver

log = logging.getLogger(__name__)

ROOT_NODE = "disk0"  # the QEMU node name of a VM's first disk (compute/qemu/cmdline.py)
ROOT_DEVICE = "disk0-dev"
OWNER_GRACE_SECONDS = 120.0  # an owner just started for a VM being created is not "unused" yet


@dataclass(frozen=True)
class VmCacheStats:
    """What ``vm show`` reports about one VM's cache."""

    image_id: str
    overlay_bytes: int  # this VM's local writes (allocated bytes of its overlay)
    image_cache_bytes: int  # the node's cache of the image, shared by its VMs
    ceph_read_bytes: int  # what the image's cache owner read from Ceph since it started
    served_bytes: int  # what the guests of this image running here read, plus pre-cache reads
    hit_ratio: float | None  # 1 - ceph_read / served; None before anything was read

    @property
    def cache_bytes(self) -> int:
        return self.overlay_bytes + self.image_cache_bytes


class NodeCache:
    """Cache-tier actions for the agent; one per node, over the RBD driver the images live in."""

    def __init__(self, tier: ImageCache, compute: ComputeDriver) -> None:
        self.tier = tier
        self.compute = compute
        self._started: dict[str, float] = {}  # image id -> when this agent last ensured its owner
        self._precached: dict[str, int] = {}  # image id -> bytes its pre-cache readers asked for

    # ------------------------------------------------------------------ create / delete
    async def prepare_disk(
        self, disk_id: str, image: StoredImage, size_bytes: int, storage: RbdStorageDriver, *, precache_bytes: int = 0
    ) -> StoredDisk:
        """The VM's disk as an overlay on the node's cache of ``image`` (read from ``storage``'s pool)."""
        self._started[image.image_id] = time.monotonic()
        return await self.tier.create_overlay(disk_id, image, size_bytes, storage, precache_bytes=precache_bytes)

    def cached_image(self, spec: VmSpec) -> str | None:
        """The image whose cache the VM's root disk reads, or None if it is not a cache overlay."""
        if not spec.disks:
            return None
        return self.tier.overlay_image(spec.disks[0].path)

    async def delete_disk(self, disk_id: str) -> bool:
        """Remove the VM's overlay if it has one; True if it had."""
        if not self.tier.overlay_path(disk_id).exists():
            return False
        await self.tier.delete_overlay(disk_id)
        return True

    # ------------------------------------------------------------------ start / stop
    async def before_start(self, spec: VmSpec) -> None:
        image_id = self.cached_image(spec)
        if image_id is None:
            return
        try:
            await self.tier.ensure_owner_for(image_id)
        except CacheError as exc:
            raise ComputeError(f"its disk's cache cannot start: {exc}") from exc
        self._started[image_id] = time.monotonic()

    def after_start(self, spec: VmSpec) -> None:
        image_id = self.cached_image(spec)
        if image_id is None:
            return
        wanted = self.tier.overlay_precache_bytes(spec.disks[0].path)
        if wanted > 0:
            self.tier.precache(spec.vm_id, image_id, wanted)
            self._precached[image_id] = self._precached.get(image_id, 0) + wanted

    def after_stop(self, vm_id: str) -> None:
        self.tier.cancel_precache(vm_id)
        for stale in self._volume_dir().glob(f"{vm_id}--*.qcow2"):
            stale.unlink(missing_ok=True)  # QEMU may still hold it open while it stops: harmless

    # ------------------------------------------------------------------ volumes (write-through)
    def _volume_dir(self) -> Path:
        return self.tier.cache_dir / "volumes"

    async def with_volume_caches(self, spec: VmSpec) -> VmSpec:
        """A cached VM's RBD volumes each get a fresh, empty local read cache (write-through).

        Fresh at every start: another VM or node may have written the volume since. Volumes
        hot-plugged into a running VM stay uncached until its next start.
        """
        if self.cached_image(spec) is None:
            return spec
        disks = list(spec.disks)
        for index, disk in enumerate(disks[1:], start=1):
            if not disk.path.startswith("rbd:") or disk.readonly or disk.media != "disk" or disk.format != "raw":
                continue
            self._volume_dir().mkdir(parents=True, exist_ok=True)
            path = self._volume_dir() / f"{spec.vm_id}--{disk.node_name or f'disk{index}'}.qcow2"
            size = await self._virtual_size(disk.path)
            path.unlink(missing_ok=True)
            await _run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size))
            disks[index] = dataclasses.replace(disk, cache_path=str(path))
        return dataclasses.replace(spec, disks=tuple(disks))

    @staticmethod
    async def _virtual_size(path: str) -> int:
        info = json.loads(await _run("qemu-img", "info", "--output=json", "-f", "raw", path))
        return int(info["virtual-size"])

    async def release_unused(self, running: list[VmSpec], *, grace: float = OWNER_GRACE_SECONDS) -> list[str]:
        """Stop the owners no running VM reads from (not those started in the last ``grace`` seconds,
        for a VM still being made)."""
        needed = {image for image in (self.cached_image(spec) for spec in running) if image is not None}
        stopped = []
        now = time.monotonic()
        for image_id in self.tier.running():
            if image_id in needed or now - self._started.get(image_id, -grace) < grace:
                continue
            if await self.tier.stop_owner(image_id):
                self._precached.pop(image_id, None)
                stopped.append(image_id)
        return stopped

    async def sweep_deleted(self, known_images: set[str]) -> list[tuple[str, int]]:
        """Remove the caches of images the cloud no longer has: (image id, bytes freed) for each.

        A deleted image's cache would otherwise stay on the node's SSD for good. A cache that an
        overlay still reads from, or whose owner runs, is left alone (a VM still uses it).
        """
        in_use = self.tier.images_in_use()
        removed = []
        for image_id in self.tier.cached():
            if image_id in known_images or image_id in in_use or self.tier.owner_pid(image_id) is not None:
                continue
            freed = self.tier.cached_bytes(image_id)
            await self.tier.drop_image(image_id)
            self._precached.pop(image_id, None)
            removed.append((image_id, freed))
        return removed

    async def close(self) -> None:
        """Cancel pre-cache readers; owners keep serving the VMs that keep running."""
        await self.tier.close()

    # ------------------------------------------------------------------ drop
    async def drop(
        self, vm_id: str, disk_id: str, image: StoredImage, storage: RbdStorageDriver, *, running: bool
    ) -> StoredDisk:
        """Move the VM's disk from its overlay into an RBD clone of ``image``; returns the clone.

        Running: the guest is pivoted onto the clone (only the overlay's own data is copied; the
        clone already holds the image). Stopped: the overlay is rebased onto the clone (same
        data) and committed into it. Either way the overlay is removed at the end; a failure
        before that leaves the VM on its overlay, the clone removed.
        """
        overlay = self.tier.overlay_path(disk_id)
        if self.tier.overlay_image(str(overlay)) != image.image_id:
            raise CacheError(f"disk {disk_id} is not a cache overlay of image {image.image_id} on this node")
        size = self.tier.overlay_size(disk_id)
        clone = await storage.clone_disk(disk_id, image, size)
        try:
            if running:
                target = DiskAttachment(clone.path, format="raw", node_name=f"{ROOT_NODE}-rbd")
                await self.compute.replace_disk(vm_id, ROOT_NODE, target)
            else:
                await self._commit_offline(overlay, clone.path)
        except (ComputeError, CacheError, StorageError):
            try:
                await storage.delete_disk(disk_id)
            except StorageError as exc:
                log.warning("could not remove the clone %s after a failed drop: %s", disk_id, exc)
            raise
        self.tier.cancel_precache(vm_id)
        await self.tier.delete_overlay(disk_id)
        return clone

    async def _commit_offline(self, overlay: Path, target: str) -> None:
        """Point the stopped VM's overlay at the clone (unsafe rebase: same bytes) and commit into it."""
        await _run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", target, str(overlay))
        await _run("qemu-img", "commit", "-q", "-f", "qcow2", "-d", str(overlay))

    # ------------------------------------------------------------------ statistics
    async def stats(self, spec: VmSpec, running: list[VmSpec]) -> VmCacheStats | None:
        """The VM's cache figures; None if its disk is not a cache overlay.

        The hit ratio is the image's, over what the guests of the image running on this node
        read (their device counters) and the pre-cache readers asked for, against what the
        owner read from Ceph since it started: both windows start over when the owner or the
        VMs restart, so it is a gauge of the current run, not a lifetime figure.
        """
        image_id = self.cached_image(spec)
        if image_id is None:
            return None
        image = await self.tier.stats(image_id)
        served = self._precached.get(image_id, 0) if image.running else 0
        for other in running:
            if self.cached_image(other) != image_id:
                continue
            try:
                if (await self.compute.status(other.vm_id)).state not in (PowerState.RUNNING, PowerState.PAUSED):
                    continue
                served += (await self.compute.disk_read_bytes(other.vm_id)).get(ROOT_DEVICE, 0)
            except ComputeError:
                continue
        disk_id = Path(spec.disks[0].path).stem
        ratio = None if served == 0 else max(0.0, min(1.0, 1.0 - image.ceph_read_bytes / served))
        return VmCacheStats(
            image_id=image_id,
            overlay_bytes=self.tier.overlay_bytes(disk_id),
            image_cache_bytes=image.cache_bytes,
            ceph_read_bytes=image.ceph_read_bytes,
            served_bytes=served,
            hit_ratio=ratio,
        )


async def _run(*argv: str) -> str:
    """Run a tool (qemu-img); its stderr becomes the CacheError's message."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise CacheError(f"{' '.join(argv[:2])} failed: {err.decode(errors='replace').strip()}")
    return out.decode()
