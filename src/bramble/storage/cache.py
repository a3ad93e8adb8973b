"""The node-local SSD cache tier in front of RBD images.

One cache per image per node, shared by every VM of that image on the node (the FlashCache
idea), so ten VMs booting from one image read it from Ceph once. Several QEMU processes
cannot write one qcow2, so each cached image has one owner process: a
``qemu-storage-daemon`` whose block graph is

    NBD export "cache" (read-only, unix socket)
      -> copy-on-read filter
        -> qcow2 cache file in ``cache_dir/images/<image_id>/cache.qcow2``
          -> backing: the RBD snapshot ``img-<id>@base`` (read-only librbd)

A read that misses the cache file is served from Ceph and written into it (QEMU serialises
overlapping copy-on-read requests, so concurrent readers fetch a region once); later reads,
from any VM, are local. The daemon is started with ``--daemonize`` and found again through
its pidfile (verified against ``/proc/PID/cmdline``), so it outlives a restart of the agent
like the VMs that read from it.

A VM's ephemeral disk is then a per-VM qcow2 overlay in ``cache_dir/overlays/<disk_id>.qcow2``
whose backing file is that NBD export: the guest's writes stay on this node, nothing per VM is
made in Ceph, and deleting the overlay deletes the VM's data. ``vm cache drop`` (and, later,
live migration) moves a running VM onto an RBD clone first (see QemuDriver.replace_disk).

Bytes read from Ceph come from librbd's own perf counters, read over an admin socket that
the daemon's private copy of the Ceph conf switches on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bramble.processes import open_verified
from bramble.storage.driver import StorageError, StoredDisk, StoredImage
from bramble.storage.rbd import BASE_SNAPSHOT, RbdStorageDriver

log = logging.getLogger(__name__)

EXPORT_NAME = "cache"
UNIX_PATH_MAX = 107
PRECACHE_CHUNK = 4 * 1024 * 1024
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CacheError(StorageError):
    """The cache tier could not do something; the message says what and why."""


@dataclass(frozen=True)
class CacheStats:
    """What one image's cache holds and how much it has saved."""

    image_id: str
    running: bool  # the owner process is up
    cache_bytes: int  # allocated bytes of the node's cache file of the image
    ceph_read_bytes: int  # bytes the owner read from Ceph since it started (librbd counters)


def _checked(kind: str, ident: str) -> str:
    if not _ID_RE.match(ident):
        raise CacheError(f"bad {kind} id {ident!r} (letters, digits, '.', '_', '-'; at most 128)")
    return ident


def allocated_bytes(path: Path) -> int:
    """Bytes a file really occupies on the local disk (holes not counted); 0 if it is missing."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _admin_command(path: Path, command: dict[str, Any], timeout: float = 5.0) -> Any:
    """One command on a Ceph admin socket: JSON + NUL out, a 4-byte big-endian length and JSON back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(command).encode() + b"\0")
        header = b""
        while len(header) < 4:
            part = sock.recv(4 - len(header))
            if not part:
                raise OSError("admin socket closed")
            header += part
        (length,) = struct.unpack(">I", header)
        body = bytearray()
        while len(body) < length:
            part = sock.recv(min(65536, length - len(body)))
            if not part:
                raise OSError("admin socket closed early")
            body += part
    return json.loads(body)


def _is_owner(pid: int, directory: Path) -> int | None:
    """A pidfd for ``pid`` if it is a live qemu-storage-daemon of ``directory``, else None."""
    return open_verified(pid, b"qemu-storage-daemon", os.fsencode(str(directory)) + b"/")


async def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    """True once the process behind ``pidfd`` has exited (within ``timeout``)."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(pidfd, gone.set)
    try:
        async with asyncio.timeout(timeout):
            await gone.wait()
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)


@dataclass(frozen=True)
class _Source:
    """Where an image's owner reads it: what ``image.json`` records, so the owner can be started
    again (after a node reboot) without the control plane."""

    image_id: str
    pool: str
    rbd_image: str
    user: str
    client_conf: str
    virtual_size_bytes: int
    rbd_id: str = ""  # the RBD image's own id: a re-upload under the same name gets a new one

    @classmethod
    def of(cls, image: StoredImage, rbd: RbdStorageDriver) -> _Source:
        return cls(
            image_id=image.image_id,
            pool=rbd.pool,
            rbd_image=rbd.image_name(image.image_id),
            user=rbd.user,
            client_conf=str(rbd.client_conf),
            virtual_size_bytes=image.virtual_size_bytes,
        )


class ImageCache:
    """The cache tier of one node: one owner per cached image, whatever RBD pool it lives in."""

    def __init__(self, cache_dir: Path, *, binary: str = "qemu-storage-daemon", start_timeout: float = 30.0) -> None:
        self.cache_dir = Path(cache_dir).absolute()
        self.binary = binary
        self.start_timeout = start_timeout
        self.images_dir = self.cache_dir / "images"
        self.overlays_dir = self.cache_dir / "overlays"
        probe = self.images_dir / ("x" * 36) / "nbd.sock"
        if len(os.fsencode(str(probe))) > UNIX_PATH_MAX:
            raise CacheError(
                f"cache_dir {self.cache_dir} is too long: unix socket paths under it would exceed"
                f" {UNIX_PATH_MAX} bytes (choose a shorter [storage] cache_dir)"
            )
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.overlays_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}
        self._precache: dict[str, asyncio.Task[int]] = {}

    # ------------------------------------------------------------------ paths
    def image_dir(self, image_id: str) -> Path:
        return self.images_dir / _checked("image", image_id)

    def socket_path(self, image_id: str) -> Path:
        return self.image_dir(image_id) / "nbd.sock"

    def export_url(self, image_id: str) -> str:
        """What a client (qemu-img, a VM's overlay) opens to read the image through the cache."""
        return f"nbd+unix:///{EXPORT_NAME}?socket={self.socket_path(image_id)}"

    def overlay_path(self, disk_id: str) -> Path:
        return self.overlays_dir / f"{_checked('disk', disk_id)}.qcow2"

    def is_overlay(self, path: str) -> bool:
        return Path(path).parent == self.overlays_dir and path.endswith(".qcow2")

    def overlay_image(self, disk_path: str) -> str | None:
        """The image whose cache an overlay reads from (None for any other disk)."""
        if not self.is_overlay(disk_path):
            return None
        try:
            record = json.loads(Path(disk_path).with_suffix(".json").read_text())
            return str(record["image_id"])
        except (OSError, ValueError, KeyError):
            return None

    def _lock(self, image_id: str) -> asyncio.Lock:
        return self._locks.setdefault(image_id, asyncio.Lock())

    # ------------------------------------------------------------------ the owner process
    def owner_pid(self, image_id: str) -> int | None:
        """The PID of the image's live cache owner, or None."""
        directory = self.image_dir(image_id)
        try:
            pid = int((directory / "qsd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        pidfd = _is_owner(pid, directory)
        if pidfd is None:
            return None
        os.close(pidfd)
        return pid

    def cached(self) -> list[str]:
        """Image ids that have a cache directory on this node (owner running or not)."""
        if not self.images_dir.is_dir():
            return []
        return sorted(
            e.name  # only what this tier could have made: a stray directory is not ours to look into
            for e in self.images_dir.iterdir()
            if e.is_dir() and not e.is_symlink() and _ID_RE.match(e.name)
        )

    def cached_bytes(self, image_id: str) -> int:
        """Disk space the image's cache holds on this node."""
        directory = self.image_dir(image_id)
        return sum(allocated_bytes(f) for f in directory.glob("cache.qcow2*") if f.is_file())

    def running(self) -> list[str]:
        """Image ids whose cache owner is running."""
        if not self.images_dir.is_dir():
            return []
        return sorted(e.name for e in self.images_dir.iterdir() if e.is_dir() and self.owner_pid(e.name) is not None)

    @staticmethod
    def _write_conf(source: _Source, directory: Path) -> Path:
        """The owner's Ceph conf: the driver's client conf plus an admin socket for librbd's counters."""
        try:
            text = Path(source.client_conf).read_text()
        except OSError as exc:
            raise CacheError(f"cannot read the Ceph configuration {source.client_conf}: {exc.strerror}") from None
        conf = directory / "ceph.conf"
        partial = conf.with_name("ceph.conf.partial")
        partial.write_text(
            f"# written by Bramble's cache tier from {source.client_conf}\n{text}\n"
            f"[client.{source.user}]\nadmin socket = {directory / 'rbd.asok'}\n"
        )
        os.replace(partial, conf)
        return conf

    def _argv(self, source: _Source, directory: Path, conf: Path) -> list[str]:
        ceph = {
            "driver": "rbd",
            "node-name": "ceph",
            "pool": source.pool,
            "image": source.rbd_image,
            "snapshot": BASE_SNAPSHOT,
            "user": source.user,
            "conf": str(conf),
            "read-only": True,
        }
        base = {"driver": "raw", "node-name": "base", "file": "ceph", "read-only": True}
        cache_file = {"driver": "file", "node-name": "cache-file", "filename": str(directory / "cache.qcow2")}
        cache = {"driver": "qcow2", "node-name": "cache", "file": "cache-file", "backing": "base"}
        cor = {"driver": "copy-on-read", "node-name": "cor", "file": "cache"}

        def js(value: dict[str, Any]) -> str:
            return json.dumps(value, separators=(",", ":"))

        return [
            self.binary,
            *("--blockdev", js(ceph), "--blockdev", js(base)),
            *("--blockdev", js(cache_file), "--blockdev", js(cache), "--blockdev", js(cor)),
            "--nbd-server",
            f"addr.type=unix,addr.path={directory / 'nbd.sock'}",
            "--export",
            f"type=nbd,id={EXPORT_NAME},node-name=cor,name={EXPORT_NAME},writable=off",
            "--chardev",
            f"socket,id=qmp,path={directory / 'qmp.sock'},server=on,wait=off",
            "--monitor",
            "chardev=qmp",
            "--daemonize",
            "--pidfile",
            str(directory / "qsd.pid"),
        ]

    async def _run(self, *argv: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise CacheError(f"{os.path.basename(argv[0])} failed: {err.decode(errors='replace').strip()}")
        return out.decode()

    async def ensure_owner(self, image: StoredImage, rbd: RbdStorageDriver) -> str:
        """Start the image's cache owner (reading it from ``rbd``'s pool) unless it runs; returns the
        NBD URL to read the image through.

        A cache file made for an earlier upload under the same id (another RBD image) is dropped.
        """
        if image.format == "iso":
            raise CacheError(f"image {image.image_id} is an ISO: it is attached as a CD-ROM, not cached")
        return await self._ensure(_Source.of(image, rbd))

    @staticmethod
    def _rbd_id(source: _Source, timeout: int = 15) -> str:
        """The image's RBD id, read as the owner will read it (its conf and user). Worker thread."""
        import rados
        import rbd

        options = {
            "client_mount_timeout": str(timeout),
            "rados_mon_op_timeout": str(timeout),
            "rados_osd_op_timeout": str(timeout),
            "log_to_stderr": "false",
            "err_to_stderr": "false",
        }
        try:
            with (
                rados.Rados(conffile=source.client_conf, rados_id=source.user, conf=options) as cluster,
                cluster.open_ioctx(source.pool) as ioctx,
                rbd.Image(ioctx, source.rbd_image, snapshot=BASE_SNAPSHOT, read_only=True) as image,
            ):
                return str(image.id())
        except (rados.Error, rbd.Error) as exc:
            raise CacheError(
                f"cannot open {source.pool}/{source.rbd_image}@{BASE_SNAPSHOT} for the cache: {exc}"
            ) from None

    async def _ensure(self, source: _Source) -> str:
        image_id = source.image_id
        async with self._lock(image_id):
            directory = self.image_dir(image_id)
            if self.owner_pid(image_id) is not None:
                return self.export_url(image_id)
            directory.mkdir(parents=True, exist_ok=True)
            source = dataclasses.replace(source, rbd_id=await asyncio.to_thread(self._rbd_id, source))
            record_path = directory / "image.json"
            record = dataclasses.asdict(source)
            cache_file = directory / "cache.qcow2"
            try:
                old = json.loads(record_path.read_text())
            except (OSError, ValueError):
                old = None
            identity = ("pool", "rbd_image", "rbd_id", "virtual_size_bytes")
            if old is None or any(old.get(key) != record[key] for key in identity):
                cache_file.unlink(missing_ok=True)  # made for another image under this id
            if not cache_file.exists():
                partial = directory / "cache.qcow2.partial"
                await self._run("qemu-img", "create", "-q", "-f", "qcow2", str(partial), str(source.virtual_size_bytes))
                os.replace(partial, cache_file)
            record_path.write_text(json.dumps(record))
            for stale in ("nbd.sock", "qmp.sock", "qsd.pid", "rbd.asok"):
                (directory / stale).unlink(missing_ok=True)
            conf = self._write_conf(source, directory)
            argv = self._argv(source, directory, conf)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                cwd=directory,
            )
            try:
                async with asyncio.timeout(self.start_timeout):
                    _, err = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                await self.stop_owner(image_id, locked=True)
                raise CacheError(
                    f"the cache of image {image_id} did not start within {self.start_timeout:g}s"
                ) from None
            if proc.returncode != 0:
                await self.stop_owner(image_id, locked=True)
                message = err.decode(errors="replace").strip()
                raise CacheError(f"cannot start the cache of image {image_id}: {message or proc.returncode}")
            if self.owner_pid(image_id) is None:
                raise CacheError(f"the cache of image {image_id} exited right after starting")
            log.info("cache owner of image %s started (pid %s)", image_id, self.owner_pid(image_id))
            return self.export_url(image_id)

    async def ensure_owner_for(self, image_id: str) -> str:
        """Start the cache owner of an image cached on this node before (after a node reboot)."""
        try:
            source = _Source(**json.loads((self.image_dir(image_id) / "image.json").read_text()))
        except (OSError, ValueError, TypeError):
            raise CacheError(f"image {image_id} has no cache on this node") from None
        return await self._ensure(source)

    async def stop_owner(self, image_id: str, *, locked: bool = False, timeout: float = 10.0) -> bool:
        """Stop the image's cache owner (SIGTERM: qcow2 metadata is flushed; SIGKILL after ``timeout``).

        The cache file stays, so the next owner starts warm. Returns True if one was running.
        """
        if not locked:
            async with self._lock(image_id):
                return await self.stop_owner(image_id, locked=True, timeout=timeout)
        directory = self.image_dir(image_id)
        try:
            pid = int((directory / "qsd.pid").read_text().strip())
        except (OSError, ValueError):
            return False
        pidfd = _is_owner(pid, directory)
        if pidfd is None:
            return False
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not await _wait_pidfd(pidfd, timeout):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                await _wait_pidfd(pidfd, 10)
        finally:
            os.close(pidfd)
        for leftover in ("nbd.sock", "qmp.sock", "qsd.pid", "rbd.asok"):
            (directory / leftover).unlink(missing_ok=True)
        log.info("cache owner of image %s stopped (pid %d)", image_id, pid)
        return True

    async def drop_image(self, image_id: str) -> None:
        """Stop the owner and delete the image's cache file (the image changed or is gone)."""
        async with self._lock(image_id):
            await self.stop_owner(image_id, locked=True)
            directory = self.image_dir(image_id)
            for name in ("cache.qcow2", "cache.qcow2.partial", "image.json", "ceph.conf"):
                (directory / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()

    # ------------------------------------------------------------------ overlays (ephemeral disks)
    async def create_overlay(
        self, disk_id: str, image: StoredImage, size_bytes: int, rbd: RbdStorageDriver, *, precache_bytes: int = 0
    ) -> StoredDisk:
        """A VM's ephemeral disk: a local qcow2 whose backing file is the image's cache export.

        Written under a temporary name and renamed, with a sidecar naming the image (so the
        agent can start the right owner before the VM, also after a node reboot) and how much
        of it to pre-cache when the VM starts.
        """
        url = await self.ensure_owner(image, rbd)
        final = self.overlay_path(disk_id)
        size = max(size_bytes, image.virtual_size_bytes)
        sidecar = final.with_suffix(".json")
        if final.exists() and self.overlay_image(str(final)) == image.image_id:
            return StoredDisk(disk_id=disk_id, path=str(final), format="qcow2", virtual_size_bytes=size)
        partial = final.with_name(f".{final.name}.partial")
        try:
            # -u: the backing size is known; qemu-img need not open the export now
            await self._run(
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", url, "-u", str(partial), str(size)
            )
            record = {"image_id": image.image_id, "virtual_size_bytes": size, "precache_bytes": precache_bytes}
            sidecar.write_text(json.dumps(record))
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return StoredDisk(disk_id=disk_id, path=str(final), format="qcow2", virtual_size_bytes=size)

    async def delete_overlay(self, disk_id: str) -> None:
        """Remove a VM's overlay: its local writes are gone (idempotent)."""
        final = self.overlay_path(disk_id)
        final.unlink(missing_ok=True)
        final.with_suffix(".json").unlink(missing_ok=True)

    def overlay_size(self, disk_id: str) -> int:
        try:
            return int(json.loads(self.overlay_path(disk_id).with_suffix(".json").read_text())["virtual_size_bytes"])
        except (OSError, ValueError, KeyError):
            raise CacheError(f"disk {disk_id} has no cache overlay on this node") from None

    def overlay_precache_bytes(self, disk_path: str) -> int:
        """How much of its image the VM of this overlay wants pre-cached at start (0: none)."""
        try:
            return int(json.loads(Path(disk_path).with_suffix(".json").read_text()).get("precache_bytes", 0))
        except (OSError, ValueError, AttributeError):
            return 0

    def overlay_bytes(self, disk_id: str) -> int:
        """Allocated bytes of one VM's overlay (its local writes plus qcow2 metadata)."""
        return allocated_bytes(self.overlay_path(disk_id))

    def images_in_use(self) -> set[str]:
        """Images some overlay on this node reads from."""
        used: set[str] = set()
        for sidecar in self.overlays_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                used.add(str(json.loads(sidecar.read_text())["image_id"]))
        return used

    # ------------------------------------------------------------------ statistics
    async def stats(self, image_id: str) -> CacheStats:
        directory = self.image_dir(image_id)
        running = self.owner_pid(image_id) is not None
        ceph = 0
        if running:
            try:
                counters = await asyncio.to_thread(_admin_command, directory / "rbd.asok", {"prefix": "perf dump"})
            except (OSError, ValueError) as exc:
                log.warning("cache of image %s: cannot read librbd counters: %s", image_id, exc)
            else:
                ceph = sum(
                    int(section.get("rd_bytes", 0))
                    for name, section in counters.items()
                    if name.startswith("librbd-") and isinstance(section, dict)
                )
        return CacheStats(image_id, running, allocated_bytes(directory / "cache.qcow2"), ceph)

    # ------------------------------------------------------------------ pre-cache
    def precache(self, key: str, image_id: str, nbytes: int, *, depth: int = 4) -> None:
        """Read the first ``nbytes`` of the image through its cache in the background.

        ``key`` names the request (the VM it is for), so that VM's stop can cancel it. The
        reader is ``qemu-img bench`` in read mode: sequential 4 MiB requests, ``depth`` in flight.
        """
        self.cancel_precache(key)
        self._precache[key] = asyncio.create_task(self._precache_run(image_id, nbytes, depth), name=f"precache-{key}")

    async def _precache_run(self, image_id: str, nbytes: int, depth: int) -> int:
        count = max(1, nbytes // PRECACHE_CHUNK)
        argv = ["qemu-img", "bench", "-f", "raw", "-c", str(count), "-d", str(depth)]
        argv += ["-s", str(PRECACHE_CHUNK), "-S", str(PRECACHE_CHUNK), self.export_url(image_id)]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        began = time.monotonic()
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # our own child, by its Process object
            await proc.wait()
            raise
        if proc.returncode != 0:
            log.warning("pre-cache of image %s failed: %s", image_id, err.decode(errors="replace").strip())
            return 0
        log.info("pre-cached %d bytes of image %s in %.1fs", count * PRECACHE_CHUNK, image_id, time.monotonic() - began)
        return count * PRECACHE_CHUNK

    def precache_task(self, key: str) -> asyncio.Task[int] | None:
        return self._precache.get(key)

    def cancel_precache(self, key: str) -> None:
        task = self._precache.pop(key, None)
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        """Cancel pre-cache readers and wait for them; owners keep running for their VMs."""
        tasks = list(self._precache.values())
        self._precache.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
