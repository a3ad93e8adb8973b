"""The agent: the only thing that touches this node's QEMU processes and disks.

Operations call it for the steps they undo on failure; its reconcile loop repairs
drift on its own (a VM that should run but does not, after a crash or a reboot of
the daemon). One lock per VM keeps an operation and the loop from acting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from bramble.agent.cache import NodeCache
from bramble.agent.control import ControlPlane
from bramble.agent.metadata import MetadataRequest, MetadataService
from bramble.agent.network import NodeNetworks
from bramble.compute.arch import get_profile, host_arch
from bramble.compute.driver import (
    ComputeDriver,
    ComputeError,
    ConsoleData,
    DesiredVm,
    DiskAttachment,
    HostFacts,
    PowerState,
    VmRuntime,
    VmSpec,
)
from bramble.compute.seed import build_seed_iso
from bramble.storage.driver import StorageDriver, StorageError, StoredDisk, StoredImage
from bramble.storage.pools import PoolSpec, StoragePools
from bramble.storage.rbd import RbdStorageDriver

log = logging.getLogger(__name__)

CONSOLE_TAIL_DEFAULT = 16 * 1024
RESTART_BACKOFF_SECONDS = (5, 15, 60, 300)


def host_memory_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


class Agent:
    def __init__(
        self,
        node: str,
        compute: ComputeDriver,
        storage: StorageDriver,
        control: ControlPlane,
        *,
        accel: str,
        accel_reason: str,
        roles: tuple[str, ...] = ("agent",),
        stop_timeout: float = 30.0,
        reconcile_interval: float = 10.0,
        heartbeat_interval: float = 10.0,
        networks: NodeNetworks | None = None,
        seed_dir: Path | None = None,
        metadata: MetadataService | None = None,
        pools: StoragePools | None = None,
        cache: NodeCache | None = None,
    ) -> None:
        self.node = node
        self.compute = compute
        self.storage = storage  # the default pool's driver
        self.pools = pools  # every pool's driver, built from the specs requests carry
        self.cache = cache  # the node cache tier in front of RBD images; None: not on this node
        self.control = control
        self.accel = accel
        self.accel_reason = accel_reason
        self.roles = roles
        self.stop_timeout = stop_timeout
        self.reconcile_interval = reconcile_interval
        self.heartbeat_interval = heartbeat_interval
        self.networks = networks
        self.seed_dir = seed_dir  # cloud-init NoCloud seeds, one ISO per VM; None: no seeds
        self.metadata = metadata
        if metadata is not None:
            metadata.on_request = self._record_metadata_request
            if networks is not None:
                networks.metadata_target = lambda nic: metadata.listen(nic.network_id, nic.gateway)
                networks.metadata_release = metadata.release
        if networks is not None:
            networks.security_source = lambda: control.security_state(node)
            networks.floating_source = lambda: control.floating_ips(node)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self._restart_failures: dict[str, tuple[int, float]] = {}

    def facts(self) -> HostFacts:
        return HostFacts(
            name=self.node,
            arch=host_arch(),
            cpus=os.cpu_count() or 1,
            memory_mib=host_memory_mib(),
            accel=self.accel,
            accel_reason=self.accel_reason,
            roles=self.roles,
        )

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _placed(self, spec: VmSpec) -> VmSpec:
        """KVM only for guests of this host's architecture, and only where KVM works."""
        native = get_profile(spec.arch).name == host_arch()
        return dataclasses.replace(spec, accel="kvm" if native and self.accel == "kvm" else "tcg")

    def _seed_path(self, vm_id: str) -> Path | None:
        return self.seed_dir / f"{vm_id}.iso" if self.seed_dir is not None else None

    async def _seeded(self, spec: VmSpec) -> VmSpec:
        """The spec with its cloud-init seed attached as a read-only CD-ROM, built fresh for this start.

        Only VMs given a key or user-data get one (others keep their disk list as it was); the
        metadata service answers every VM either way."""
        data = spec.cloud_init
        path = self._seed_path(spec.vm_id)
        if data is None or path is None or (not data.public_keys and data.user_data is None):
            return spec
        await asyncio.to_thread(build_seed_iso, path, data, spec.nics)
        seed = DiskAttachment(path=str(path), format="raw", media="cdrom", readonly=True)
        return dataclasses.replace(spec, disks=(*spec.disks, seed))

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Register, re-attach to VMs that survived a restart, converge, then keep converging."""
        self.compute.set_state_callback(self._on_driver_state)
        await self.control.register_node(self.facts())
        await self._adopt()
        await self.reconcile_once()
        if self.networks is not None:
            try:
                stray = await self.networks.sweep_taps()
            except Exception:  # a sweep is housekeeping: it must not keep the node from starting
                log.exception("could not sweep stray taps")
            else:
                if stray:
                    log.info("removed %d stray tap(s): %s", len(stray), ", ".join(stray))
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="agent-reconcile"),
            asyncio.create_task(self._heartbeat_loop(), name="agent-heartbeat"),
        ]

    async def stop(self) -> None:
        """Stop the loops and let go of QMP; VMs keep running."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.compute.set_state_callback(None)
        await self.compute.close()
        if self.cache is not None:
            await self.cache.close()  # pre-cache readers stop; cache owners keep serving running VMs
        if self.networks is not None:
            await self.networks.close()
        if self.metadata is not None:
            await self.metadata.close()

    async def _adopt(self) -> None:
        known = await self.control.known_vm_ids(self.node)
        for runtime in await self.compute.adopt():
            alive = runtime.state in (PowerState.RUNNING, PowerState.PAUSED)
            if runtime.vm_id in known:
                # A process that died while we were away tells us nothing about why: it is
                # not a guest shutdown, so leave it to the reconcile pass to start again.
                if alive:
                    await self.control.report_vm_state(self.node, runtime)
            elif alive:
                # The database no longer has this VM (deleted while we were down): reap it.
                await self.compute.stop(runtime.vm_id, force=True)
                await self.compute.cleanup(runtime.vm_id)
                await self.control.record_event(
                    self.node,
                    "vm.orphan_reaped",
                    f"vm/{runtime.vm_id}",
                    f"stopped QEMU pid {runtime.pid}: no VM with this id in the database",
                )

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=self.reconcile_interval)
            self._kick.clear()
            try:
                await self.reconcile_once()
            except Exception:  # the loop must survive anything one pass runs into
                log.exception("reconcile pass failed")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.control.heartbeat(self.node)
            except Exception:
                log.exception("heartbeat failed")

    async def _on_driver_state(self, runtime: VmRuntime) -> None:
        await self.control.report_vm_state(self.node, runtime)
        if runtime.state is PowerState.CRASHED:
            self._kick.set()

    # ------------------------------------------------------------------ reconcile
    async def reconcile_once(self) -> None:
        if self.networks is not None and self.networks.firewall_stale:
            try:
                await self.networks.refresh()
            except Exception:  # the VMs still converge; the next pass tries the firewall again
                log.exception("could not re-apply the firewall")
        for desired in await self.control.desired_vms(self.node):
            vm_id = desired.spec.vm_id
            async with self._lock(vm_id):
                fresh = await self.control.desired_vm(self.node, vm_id)
                if fresh is not None:
                    await self._converge(fresh)
        if self.networks is not None:
            try:  # after the plugs: mappings follow the NICs this node has
                await self.networks.refresh_floating()
            except Exception:  # the next pass tries again
                log.exception("could not apply the floating IPs")
        if self.cache is not None and self.cache.tier.cached():
            try:
                await self._release_caches()
            except Exception:  # housekeeping: the next pass tries again
                log.exception("could not release unused image caches")

    async def _release_caches(self) -> None:
        """Stop the cache owners (by PID) that no VM running on this node reads from, and remove the
        caches of images the cloud no longer has."""
        assert self.cache is not None
        running = []
        for desired in await self.control.desired_vms(self.node):
            if (await self.compute.status(desired.spec.vm_id)).state in (PowerState.RUNNING, PowerState.PAUSED):
                running.append(desired.spec)
        for image_id in await self.cache.release_unused(running):
            log.info("stopped the cache owner of image %s: no running VM here reads it", image_id)
        for image_id, freed in await self.cache.sweep_deleted(await self.control.known_image_ids()):
            message = f"removed this node's cache of deleted image {image_id} ({freed / 2**20:.0f} MiB freed)"
            log.info("%s", message)
            await self.control.record_event(self.node, "image.cache_removed", f"image/{image_id}", message)

    async def _converge(self, desired: DesiredVm) -> None:
        vm_id = desired.spec.vm_id
        runtime = await self.compute.status(vm_id)
        want = desired.desired_state
        try:
            if desired.spec.nics and want != "stopped" and self._may_restart(vm_id):
                # Also after a daemon restart with the VM still running: its DHCP server must come back.
                await self._plug(self._placed(desired.spec))
            if want in ("running", "paused") and runtime.state in (PowerState.STOPPED, PowerState.CRASHED):
                if not self._may_restart(vm_id):
                    return
                if desired.disk_id and not await self._disk_present(desired):
                    raise ComputeError("its disk is missing")
                cached = await self._before_start(self._placed(desired.spec))
                runtime = await self.compute.start(await self._seeded(cached))
                self._after_start(desired.spec)
                runtime.extra["accel"] = self._placed(desired.spec).accel
                runtime.reason = f"started by the agent: desired state is {want}"
                self._restart_failures.pop(vm_id, None)
                if want == "paused":
                    runtime = await self.compute.pause(vm_id)
            elif want == "stopped" and runtime.state in (PowerState.RUNNING, PowerState.PAUSED):
                runtime = await self.compute.stop(vm_id, timeout=self.stop_timeout)
                if self.cache is not None:
                    self.cache.after_stop(vm_id)
            elif want == "paused" and runtime.state is PowerState.RUNNING:
                runtime = await self.compute.pause(vm_id)
            elif want == "running" and runtime.state is PowerState.PAUSED:
                runtime = await self.compute.resume(vm_id)
        except ComputeError as exc:
            count = self._restart_failures.get(vm_id, (0, 0.0))[0] + 1
            delay = RESTART_BACKOFF_SECONDS[min(count, len(RESTART_BACKOFF_SECONDS)) - 1]
            self._restart_failures[vm_id] = (count, time.monotonic() + delay)
            await self.control.record_event(
                self.node,
                "vm.reconcile",
                f"vm/{desired.spec.name}",
                f"could not make it {want}: {exc} (attempt {count}, next in {delay} s)",
                outcome="failed",
            )
            return
        await self.control.report_vm_state(self.node, runtime)

    async def _record_metadata_request(self, request: MetadataRequest) -> None:
        target = f"vm/{request.vm_name}" if request.vm_name else f"network/{request.network_id}"
        message = f"GET {request.path} from {request.client}: {request.status}"
        outcome = "ok" if request.status == 200 else "rejected"
        await self.control.record_event(self.node, "metadata.request", target, message, outcome=outcome)

    async def _plug(self, spec: VmSpec) -> None:
        """Bridges, taps, firewall and DHCP for the VM's NICs (a no-op when nothing changed)."""
        if self.metadata is not None:
            self.metadata.register(spec)
        if self.networks is None:
            if spec.nics:
                raise ComputeError("this node has no network driver for the VM's NICs")
            return
        try:
            await self.networks.plug(spec)
        except Exception as exc:  # the kernel's refusal is the user's answer: say which and why
            raise ComputeError(f"cannot plug its NICs: {exc}") from exc

    def _may_restart(self, vm_id: str) -> bool:
        failures = self._restart_failures.get(vm_id)
        return failures is None or time.monotonic() >= failures[1]

    # ------------------------------------------------------------------ gateway (called by operations)
    def _storage_for(self, pool: PoolSpec | None) -> StorageDriver:
        """The driver of ``pool``, made on first use (one Ceph connection per pool on this node)."""
        if pool is None or self.pools is None:
            return self.storage
        return self.pools.driver(pool)

    async def prepare_disk(
        self, disk_id: str, image: StoredImage, size_bytes: int, pool: PoolSpec | None = None
    ) -> StoredDisk:
        return await self._storage_for(pool).clone_disk(disk_id, image, size_bytes)

    async def delete_disk(self, disk_id: str, pool: PoolSpec | None = None) -> None:
        if self.cache is not None and await self.cache.delete_disk(disk_id):
            return  # a cached disk: its overlay (and the VM's writes) are gone; nothing in Ceph
        await self._storage_for(pool).delete_disk(disk_id)

    # ------------------------------------------------------------------ cache tier
    def _cache_storage(self, pool: PoolSpec | None) -> tuple[NodeCache, RbdStorageDriver]:
        storage = self._storage_for(pool)
        if self.cache is None:
            raise StorageError("this node has no cache tier (its [storage] cache_dir could not be used)")
        if not isinstance(storage, RbdStorageDriver):
            raise StorageError(f"the cache tier fronts RBD images; this pool uses the {storage.name} driver")
        return self.cache, storage

    async def _disk_present(self, desired: DesiredVm) -> bool:
        assert desired.disk_id is not None
        if self.cache is not None and self.cache.cached_image(desired.spec) is not None:
            return True  # an overlay on this node's cache; its owner is started before QEMU
        return await self._storage_for(desired.disk_pool).disk_exists(desired.disk_id)

    async def _before_start(self, spec: VmSpec) -> VmSpec:
        """The cache owner of a cached VM's image runs; its RBD volumes get write-through read caches."""
        if self.cache is None:
            return spec
        await self.cache.before_start(spec)
        try:
            return await self.cache.with_volume_caches(spec)
        except StorageError as exc:
            raise ComputeError(f"cannot make the read caches of its volumes: {exc}") from exc

    def _after_start(self, spec: VmSpec) -> None:
        if self.cache is not None:
            self.cache.after_start(spec)

    async def prepare_cached_disk(
        self, disk_id: str, image: StoredImage, size_bytes: int, pool: PoolSpec | None, precache_bytes: int
    ) -> StoredDisk:
        cache, storage = self._cache_storage(pool)
        return await cache.prepare_disk(disk_id, image, size_bytes, storage, precache_bytes=precache_bytes)

    async def drop_cache(self, vm_id: str, image: StoredImage, pool: PoolSpec | None) -> StoredDisk:
        """Into Ceph: a running guest is pivoted onto an RBD clone, a stopped VM's overlay committed into one."""
        cache, storage = self._cache_storage(pool)
        async with self._lock(vm_id):
            state = (await self.compute.status(vm_id)).state
            running = state in (PowerState.RUNNING, PowerState.PAUSED)
            return await cache.drop(vm_id, vm_id, image, storage, running=running)

    async def cache_stats(self, spec: VmSpec) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        others = [desired.spec for desired in await self.control.desired_vms(self.node)]
        stats = await self.cache.stats(spec, others)
        if stats is None:
            return None
        return {**dataclasses.asdict(stats), "cache_bytes": stats.cache_bytes}

    async def start_vm(self, spec: VmSpec) -> VmRuntime:
        placed = self._placed(spec)
        async with self._lock(spec.vm_id):
            await self._plug(placed)
            cached = await self._before_start(placed)
            runtime = await self.compute.start(await self._seeded(cached))
            self._after_start(placed)
        runtime.extra["accel"] = placed.accel
        self._restart_failures.pop(spec.vm_id, None)
        return runtime

    async def attach_volume(self, vm_id: str, disk: DiskAttachment) -> None:
        async with self._lock(vm_id):
            await self.compute.attach_disk(vm_id, disk)

    async def detach_volume(self, vm_id: str, node_name: str) -> None:
        async with self._lock(vm_id):
            await self.compute.detach_disk(vm_id, node_name)

    async def grow_volume(self, vm_id: str, node_name: str, size_bytes: int) -> None:
        async with self._lock(vm_id):
            await self.compute.grow_disk(vm_id, node_name, size_bytes)

    async def stop_vm(self, vm_id: str, *, force: bool, timeout: float | None = None) -> VmRuntime:
        async with self._lock(vm_id):
            if self.cache is not None:
                self.cache.after_stop(vm_id)
            return await self.compute.stop(
                vm_id, force=force, timeout=self.stop_timeout if timeout is None else timeout
            )

    async def reboot_vm(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            return await self.compute.reboot(vm_id)

    async def pause_vm(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            return await self.compute.pause(vm_id)

    async def resume_vm(self, vm_id: str) -> VmRuntime:
        async with self._lock(vm_id):
            return await self.compute.resume(vm_id)

    async def destroy_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            if self.cache is not None:
                self.cache.after_stop(vm_id)
            await self.compute.stop(vm_id, force=True)
            await self.compute.cleanup(vm_id)
            # The console log outlives a stop but not a delete. Only a regular file is
            # removed: a driver without logs may point at a device such as /dev/null.
            console = Path(self.compute.console_path(vm_id))
            if console.is_file() and not console.is_symlink():
                console.unlink()
                with contextlib.suppress(OSError):
                    console.parent.rmdir()
            if self.networks is not None:
                await self.networks.unplug(vm_id)
            seed = self._seed_path(vm_id)
            if seed is not None:
                seed.unlink(missing_ok=True)
            if self.metadata is not None:
                self.metadata.forget(vm_id)
        self._locks.pop(vm_id, None)
        self._restart_failures.pop(vm_id, None)

    async def refresh_security(self) -> None:
        if self.networks is not None:
            await self.networks.refresh()

    async def refresh_floating_ips(self) -> None:
        if self.networks is not None:
            await self.networks.refresh_floating()

    async def read_console(self, vm_id: str, offset: int | None, tail: int) -> ConsoleData:
        path = Path(self.compute.console_path(vm_id))
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = max(0, size - tail) if offset is None else min(offset, size)
                f.seek(start)
                data = f.read(min(size - start, 4 * 1024 * 1024))
        except FileNotFoundError:
            return ConsoleData(b"", 0, 0)
        return ConsoleData(data, start + len(data), size)
