"""Ceph RBD storage: images imported once, VM disks as copy-on-write clones.

Layout in the pool (one pool per driver):

* ``img-<image_id>``: an image, format 2 with layering, plus a protected snapshot
  ``base`` that every clone hangs off. Cloning is a metadata operation in Ceph, so
  it costs the same for a 1 GiB and a 1 TiB image.
* ``disk-<disk_id>``: a VM disk, an RBD clone of ``img-...@base`` (or a blank image).
* ``tmp-<token>-<name>``: an upload in progress. It is renamed to its final name only
  when complete, so a broken upload never leaves a half-written image under a real
  name. If Ceph became unreachable before the leftover could be removed,
  ``sweep_partials`` removes it later (only when no client has it open).

Every librados/librbd call blocks, so each runs in a worker thread; one cluster
connection is opened lazily and reused. Its time-outs are set so that an unreachable
cluster fails an operation in seconds, not the five minutes librados waits by default.
QEMU gets no such time-outs (its disks are opened through librbd by QEMU itself): a
running VM whose cluster stalls waits for it instead of seeing I/O errors.

References handed to QEMU use QEMU's own rbd pseudo-filename syntax,
``rbd:<pool>/<image>:id=<user>:conf=<path>``. No secret is in it: the key stays in the
keyring file, which the ``conf`` names (the driver writes a derived conf for that
when the keyring is configured separately).

Kernel and initrd parts of an image are small files QEMU must read from the local
file system (``-kernel``), so they stay in ``work_dir`` on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bramble.storage.driver import (
    DiskSnapshot,
    PoolUsage,
    StorageDriver,
    StorageError,
    StorageUnavailable,
    StoredDisk,
    StoredImage,
    detect_format,
    write_file_atomically,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

BASE_SNAPSHOT = "base"
IMAGE_PREFIX = "img-"
DISK_PREFIX = "disk-"
PARTIAL_PREFIX = "tmp-"
HEAD_BYTES = 64 * 1024
BLOCK_BYTES = 4 * 1024 * 1024  # one RBD object: writes of this size touch one object each
FIRST_SIZE = 1024**3  # a streamed upload's image starts here and doubles as needed
LOCAL_PARTS = ("kernel", "initrd")
SWEEP_AGE = 300.0  # seconds: a temporary image younger than this may be another node's upload
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
POOL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class HasClonesError(StorageError):
    """An image (or snapshot) cannot go: disks are cloned from it. ``clones`` names them."""

    def __init__(self, message: str, clones: list[str]) -> None:
        super().__init__(message)
        self.clones = clones


def _escape(value: str) -> str:
    """Escape a value for QEMU's rbd pseudo-filename, where ``:`` ``/`` ``@`` ``\\`` separate fields."""
    return re.sub(r"([:/@\\])", r"\\\1", value)


def rbd_reference(pool: str, image: str, *, user: str, conf: str | Path, snapshot: str | None = None) -> str:
    """``rbd:pool/image[@snap]:id=user:conf=path``, understood by qemu-img and Bramble's QEMU driver."""
    spec = f"{_escape(pool)}/{_escape(image)}"
    if snapshot:
        spec += f"@{_escape(snapshot)}"
    return f"rbd:{spec}:id={_escape(user)}:conf={_escape(str(conf))}"


def _errno_of(exc: BaseException) -> int | None:
    value = getattr(exc, "errno", None)
    return value if isinstance(value, int) else None


class RbdStorageDriver(StorageDriver):
    changes_while_open = True
    name = "rbd"

    def __init__(
        self,
        *,
        conf: Path,
        pool: str,
        work_dir: Path,
        user: str = "admin",
        keyring: Path | None = None,
        op_timeout: int = 15,
        connect_timeout: int = 10,
    ) -> None:
        try:  # Debian's bindings, not on PyPI; the embedded default (local storage) goes without them
            import rados  # noqa: F401
            import rbd  # noqa: F401
        except ImportError:
            raise StorageError(
                "Ceph RBD storage needs Debian's python3-rados and python3-rbd, and qemu-block-extra for "
                "QEMU's rbd driver: run scripts/install-deps.sh ceph (or apt-get install python3-rados "
                "python3-rbd ceph-common qemu-block-extra)"
            ) from None
        if not POOL_RE.match(pool):
            raise StorageError(f"bad Ceph pool name {pool!r}")
        if not USER_RE.match(user):
            raise StorageError(f"bad Ceph user name {user!r} (give the id without 'client.')")
        self.conf = Path(conf)
        self.pool = pool
        self.user = user
        self.keyring = Path(keyring) if keyring else None
        if op_timeout < 1 or connect_timeout < 1:
            raise StorageError("Ceph time-outs are whole seconds, at least 1")
        self.op_timeout = int(op_timeout)
        self.connect_timeout = int(connect_timeout)
        self.work_dir = Path(work_dir)
        self.images_dir = self.work_dir / "images"
        self.spool_dir = self.work_dir / "spool"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # what QEMU reads; written now if possible, else by the first connect (which reports why not)
        self.client_conf = self.conf if self.keyring is None else self.work_dir / f"ceph-client.{user}.conf"
        with contextlib.suppress(StorageError):
            self._write_client_conf()
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._ioctx: Any = None
        self._swept = False

    # ------------------------------------------------------------------ connection
    def _write_client_conf(self) -> None:
        """The conf QEMU and qemu-img read: the configured one, plus the keyring if set apart.

        QEMU's ``-blockdev`` rbd driver has no keyring option, only ``conf``; a section
        appended for our user overrides what the original file says for it.
        """
        if self.keyring is None:
            return
        try:
            text = self.conf.read_text()
        except OSError as exc:
            raise StorageError(f"cannot read the Ceph configuration {self.conf}: {exc.strerror}") from None
        derived = self.client_conf
        partial = derived.with_name(derived.name + ".partial")
        partial.write_text(
            f"# written by Bramble from {self.conf}; rewritten at every start\n{text}\n"
            f"[client.{self.user}]\nkeyring = {self.keyring}\n"
        )
        os.replace(partial, derived)

    def _where(self) -> str:
        return f"pool {self.pool!r} as client.{self.user} (conf {self.conf})"

    def _connect(self) -> Any:
        """The shared I/O context of our pool; connects first if needed. Runs in a worker thread."""
        with self._lock:
            if self._ioctx is not None:
                return self._ioctx
            import rados

            options = {
                "client_mount_timeout": str(self.connect_timeout),
                "rados_mon_op_timeout": str(self.op_timeout),
                "rados_osd_op_timeout": str(self.op_timeout),
                # failures come back as StorageError; do not also spray them on stderr
                "log_to_stderr": "false",
                "err_to_stderr": "false",
            }
            if self.keyring is not None:
                options["keyring"] = str(self.keyring)
            if not self.conf.is_file():
                raise StorageError(f"the Ceph configuration {self.conf} does not exist")
            self._write_client_conf()
            try:
                cluster = rados.Rados(conffile=str(self.conf), rados_id=self.user, conf=options)
            except rados.Error as exc:
                raise StorageError(f"bad Ceph configuration {self.conf}: {exc}") from None
            try:
                cluster.connect(timeout=self.connect_timeout)
            except rados.Error as exc:
                with contextlib.suppress(Exception):
                    cluster.shutdown()
                code = _errno_of(exc)
                if code in (errno.EACCES, errno.EPERM) or isinstance(exc, rados.PermissionError):
                    raise StorageError(
                        f"Ceph refused client.{self.user}: wrong key or no such user"
                        f" (keyring {self.keyring or 'from ' + str(self.conf)})"
                    ) from None
                if code in (errno.ETIMEDOUT, errno.EINTR) or isinstance(exc, rados.TimedOut):
                    raise StorageUnavailable(
                        f"Ceph is unreachable: no monitor answered within {self.connect_timeout} s (conf {self.conf})"
                    ) from None
                raise StorageError(f"cannot connect to Ceph ({self._where()}): {exc}") from None
            try:
                ioctx = cluster.open_ioctx(self.pool)
            except rados.Error as exc:
                cluster.shutdown()
                if isinstance(exc, rados.ObjectNotFound):
                    raise StorageError(f"the Ceph pool {self.pool!r} does not exist (conf {self.conf})") from None
                raise StorageError(f"cannot open the Ceph pool {self.pool!r}: {exc}") from None
            self._cluster, self._ioctx = cluster, ioctx
            return ioctx

    async def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(ioctx)`` in a worker thread; Ceph errors become StorageError naming ``what``."""

        def work() -> T:
            ioctx = self._connect()
            if not self._swept:
                self._swept = True
                try:
                    self._sweep(SWEEP_AGE, ioctx)
                except Exception as exc:  # the sweep is housekeeping; the caller's operation goes on
                    log.warning("sweeping unfinished RBD images failed: %s", exc)
            try:
                return fn(ioctx)
            except StorageError:
                raise
            except Exception as exc:
                # ESHUTDOWN is also what Ceph returns to a client it has blocklisted
                if _errno_of(exc) == errno.ESHUTDOWN or type(exc).__name__ == "ConnectionShutdown":
                    self._drop_connection()  # unusable now; the next call reconnects
                raise self._translate(what, exc) from None

        return await asyncio.to_thread(work)

    def _translate(self, what: str, exc: Exception) -> StorageError:
        import rados
        import rbd

        code = _errno_of(exc)
        if isinstance(exc, rbd.Timeout | rados.TimedOut) or code == errno.ETIMEDOUT:
            return StorageUnavailable(f"{what}: Ceph did not answer within {self.op_timeout} s")
        if isinstance(exc, rbd.PermissionError | rados.PermissionError) or code in (errno.EACCES, errno.EPERM):
            return StorageError(f"{what}: Ceph denied client.{self.user} access to pool {self.pool!r}")
        if isinstance(exc, rbd.ConnectionShutdown | rados.ConnectionShutdown):
            return StorageError(f"{what}: the Ceph connection was shut down")
        if isinstance(exc, rbd.NoSpace | rados.NoSpace) or code == errno.ENOSPC:
            return StorageError(f"{what}: the Ceph pool {self.pool!r} is full")
        if isinstance(exc, rbd.ImageNotFound):
            return StorageError(f"{what}: no such RBD image in pool {self.pool!r}")
        return StorageError(f"{what}: {exc}")

    def _drop_connection(self) -> None:
        with self._lock:
            ioctx, cluster = self._ioctx, self._cluster
            self._ioctx = self._cluster = None
        with contextlib.suppress(Exception):
            if ioctx is not None:
                ioctx.close()
            if cluster is not None:
                cluster.shutdown()

    async def close(self) -> None:
        """Drop the cluster connection (the next call reconnects)."""
        await asyncio.to_thread(self._drop_connection)

    # ------------------------------------------------------------------ names
    @staticmethod
    def _checked(kind: str, ident: str) -> str:
        if not NAME_RE.match(ident):
            raise StorageError(f"bad {kind} id {ident!r} (letters, digits, '.', '_', '-'; at most 128)")
        return ident

    def image_name(self, image_id: str) -> str:
        return IMAGE_PREFIX + self._checked("image", image_id)

    def disk_name(self, disk_id: str) -> str:
        return DISK_PREFIX + self._checked("disk", disk_id)

    def _partial_name(self, final: str) -> str:
        return f"{PARTIAL_PREFIX}{secrets.token_hex(4)}-{final}"

    def reference(self, name: str, snapshot: str | None = None) -> str:
        """What QEMU opens for the RBD image ``name`` of our pool."""
        return rbd_reference(self.pool, name, user=self.user, conf=self.client_conf, snapshot=snapshot)

    def _local_dir(self, image_id: str) -> Path:
        return self.images_dir / self._checked("image", image_id)

    def _disk_id_of(self, pool: str, name: str) -> str:
        if pool == self.pool and name.startswith(DISK_PREFIX):
            return name[len(DISK_PREFIX) :]
        return f"{pool}/{name}"

    # ------------------------------------------------------------------ image helpers (worker threads)
    @staticmethod
    @contextlib.contextmanager
    def _open(ioctx: Any, name: str, *, snapshot: str | None = None, read_only: bool = False) -> Iterator[Any]:
        import rbd

        image = rbd.Image(ioctx, name, snapshot=snapshot, read_only=read_only)
        try:
            yield image
        finally:
            image.close()

    @staticmethod
    def _exists(ioctx: Any, name: str) -> bool:
        import rbd

        try:
            with RbdStorageDriver._open(ioctx, name, read_only=True):
                return True
        except rbd.ImageNotFound:
            return False

    def _children(self, image: Any, snapshot: str) -> list[str]:
        image.set_snap(snapshot)
        try:
            return sorted(self._disk_id_of(c["pool"], c["image"]) for c in image.list_children2())
        finally:
            image.set_snap(None)

    def _remove(self, ioctx: Any, name: str, *, flatten_children: bool = False) -> None:
        """Remove an image and its snapshots; refuse while snapshots have clones (unless flattening them)."""
        import rbd

        try:
            image_cm = self._open(ioctx, name)
            image = image_cm.__enter__()
        except rbd.ImageNotFound:
            return
        try:
            # check before touching snapshots: a failed delete must not have removed any
            self._refuse_if_open_by_others(image, name, "delete it")
            for snap in list(image.list_snaps()):
                children = list(self._child_specs(image, snap["name"]))
                if children and not flatten_children:
                    ids = sorted(self._disk_id_of(pool, child) for pool, child in children)
                    raise HasClonesError(f"{name}@{snap['name']} has clones: {', '.join(ids)}", ids)
                for pool, child in children:
                    self._flatten_child(ioctx, pool, child)
                if image.is_protected_snap(snap["name"]):
                    image.unprotect_snap(snap["name"])
                image.remove_snap(snap["name"])
        finally:
            image_cm.__exit__(None, None, None)
        try:
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageNotFound:
            return
        except rbd.ImageBusy:
            raise StorageError(f"{name} is in use (a VM or another client has it open)") from None

    def _flatten_child(self, ioctx: Any, pool: str, child: str) -> None:
        if pool == self.pool:
            with self._open(ioctx, child) as clone:
                clone.flatten()
            return
        with self._cluster.open_ioctx(pool) as other, self._open(other, child) as clone:
            clone.flatten()

    def _child_specs(self, image: Any, snapshot: str) -> Iterator[tuple[str, str]]:
        image.set_snap(snapshot)
        try:
            children = [(c["pool"], c["image"]) for c in image.list_children2()]
        finally:
            image.set_snap(None)
        yield from children

    def _used_bytes(self, image: Any, size: int) -> int:
        """Bytes allocated in the image (whole objects; fast with the object map)."""
        used = 0

        def count(offset: int, length: int, exists: bool) -> int:
            nonlocal used
            if exists:
                used += length
            return 0

        if size:
            image.diff_iterate(0, size, None, count, include_parent=False, whole_object=True)
        return used

    # ------------------------------------------------------------------ streaming into a new image
    async def _stream_into_new_image(
        self, final: str, chunks: AsyncIterator[bytes], head: bytes = b"", *, replace: bool = True
    ) -> int:
        """Write a byte stream into a temporary image, then rename it to ``final``.

        Blocks that are all zero are not written, so a sparse raw image stays sparse.
        Returns the number of bytes received.
        """
        import rbd

        partial = self._partial_name(final)
        state = {"size": FIRST_SIZE, "offset": 0}
        holder: dict[str, Any] = {}

        def create(ioctx: Any) -> None:
            rbd.RBD().create(ioctx, partial, FIRST_SIZE, old_format=False, features=None)
            holder["image"] = rbd.Image(ioctx, partial)

        def write(block: bytes, _ioctx: Any = None) -> None:
            image = holder["image"]
            end = state["offset"] + len(block)
            if end > state["size"]:
                state["size"] = max(end, state["size"] * 2)
                image.resize(state["size"])
            if block.count(0) != len(block):
                image.write(block, state["offset"])
            state["offset"] = end

        def finish(ioctx: Any) -> None:
            image = holder.pop("image")
            try:
                image.resize(state["offset"])
                image.flush()
            finally:
                image.close()
            self._replace(ioctx, partial, final, replace=replace)

        try:
            await self._call(f"creating a temporary image for {final}", create)
            buffer = bytearray(head)
            while True:
                # whole blocks also out of ``head``: an upload may arrive in one big chunk
                while len(buffer) >= BLOCK_BYTES:
                    block = bytes(buffer[:BLOCK_BYTES])
                    del buffer[:BLOCK_BYTES]
                    await self._call(f"writing {final}", functools.partial(write, block))
                chunk = await anext(chunks, None)
                if chunk is None:
                    break
                buffer += chunk
            if buffer:
                await self._call(f"writing {final}", functools.partial(write, bytes(buffer)))
            await self._call(f"completing {final}", finish)
        except BaseException:
            await self._discard_partial(partial, holder.get("image"))
            raise
        return state["offset"]

    def _replace(self, ioctx: Any, partial: str, final: str, *, replace: bool = True) -> None:
        """Rename ``partial`` to ``final``, removing an older ``final`` (if allowed) unless clones need it."""
        import rbd

        if self._exists(ioctx, final):
            if not replace:
                raise StorageError(f"{final} was created by someone else meanwhile")
            self._remove(ioctx, final)
        try:
            rbd.RBD().rename(ioctx, partial, final)
        except rbd.ImageExists:
            raise StorageError(f"{final} was created by someone else meanwhile") from None

    async def _discard_partial(self, partial: str, image: Any) -> None:
        """Best effort: remove an unfinished upload. If Ceph is down, sweep_partials does it later."""

        def discard(ioctx: Any) -> None:
            if image is not None:
                with contextlib.suppress(Exception):
                    image.close()
            self._remove(ioctx, partial)

        with contextlib.suppress(StorageError):
            await asyncio.shield(self._call(f"removing the unfinished {partial}", discard))

    async def sweep_partials(self, *, older_than: float = SWEEP_AGE) -> list[str]:
        """Remove unfinished uploads nobody has open any more (left when Ceph failed mid-write).

        An upload in progress keeps its image open (a watcher), and young images are left
        alone too, so a sweep never breaks another node's running upload. The driver also
        sweeps once by itself after its first connection.
        """
        return await self._call("sweeping unfinished uploads", functools.partial(self._sweep, older_than))

    def _sweep(self, older_than: float, ioctx: Any) -> list[str]:
        import rbd

        removed = []
        for name in rbd.RBD().list(ioctx):
            if not name.startswith(PARTIAL_PREFIX):
                continue
            try:
                with self._open(ioctx, name, read_only=True) as image:
                    age = time.time() - image.create_timestamp().timestamp()
                    busy = bool(list(image.watchers_list()))
            except rbd.ImageNotFound:
                continue
            if busy or age < older_than:
                continue
            with contextlib.suppress(StorageError, rbd.ImageNotFound, rbd.ImageBusy):
                self._remove(ioctx, name)
                removed.append(name)
                log.info("removed %s/%s, an unfinished upload or clone", self.pool, name)
        return removed

    # ------------------------------------------------------------------ images
    async def write_image(self, image_id: str, chunks: AsyncIterator[bytes], *, part: str = "disk") -> int:
        if part in LOCAL_PARTS:
            return await self._write_local_part(image_id, part, chunks)
        if part != "disk":
            raise StorageError(f"unknown image part {part!r}")
        final = self.image_name(image_id)
        await self._call(f"checking {final}", lambda io: self._refuse_if_cloned(io, final))
        head = bytearray()
        iterator = aiter(chunks)
        async for chunk in iterator:
            head += chunk
            if len(head) >= HEAD_BYTES:
                break
        if detect_format(bytes(head[:HEAD_BYTES])) == "qcow2":
            return await self._import_qcow2(final, bytes(head), iterator)
        return await self._stream_into_new_image(final, iterator, bytes(head))

    def _refuse_if_cloned(self, ioctx: Any, name: str) -> None:
        import rbd

        try:
            with self._open(ioctx, name, read_only=True) as image:
                for snap in image.list_snaps():
                    children = sorted(self._disk_id_of(p, c) for p, c in self._child_specs(image, snap["name"]))
                    if children:
                        raise HasClonesError(
                            f"{name} has clones ({', '.join(children)}); it cannot be replaced", children
                        )
        except rbd.ImageNotFound:
            return

    async def _write_local_part(self, image_id: str, part: str, chunks: AsyncIterator[bytes]) -> int:
        folder = self._local_dir(image_id)
        folder.mkdir(exist_ok=True)
        return await write_file_atomically(folder / part, chunks)

    async def _import_qcow2(self, final: str, head: bytes, rest: AsyncIterator[bytes]) -> int:
        """qcow2 cannot be read as a stream: spool it locally, check it, convert it to raw in RBD.

        ``qemu-img convert`` skips the image's holes, so a large sparse qcow2 costs only its data.
        """
        spool = self.spool_dir / f"{secrets.token_hex(8)}.qcow2"
        received = 0
        try:
            with open(spool, "wb") as out:
                out.write(head)
                received += len(head)
                async for chunk in rest:
                    out.write(chunk)
                    received += len(chunk)
            info = await self._qcow2_info(spool)
            virtual = int(info["virtual-size"])
            partial = self._partial_name(final)

            def create(ioctx: Any) -> None:
                import rbd

                rbd.RBD().create(ioctx, partial, virtual, old_format=False)

            await self._call(f"creating a temporary image for {final}", create)
            try:
                await _run(
                    "qemu-img", "convert", "-q", "-n", "--target-is-zero", "-W", "-m", "4",
                    "-f", "qcow2", "-O", "raw", str(spool), self.reference(partial),
                    what=f"converting the qcow2 upload into {final}",
                )  # fmt: skip
                await self._call(f"completing {final}", lambda io: self._replace(io, partial, final))
            except BaseException:
                await self._discard_partial(partial, None)
                raise
        finally:
            spool.unlink(missing_ok=True)
        return received

    async def _qcow2_info(self, path: Path) -> dict[str, Any]:
        try:
            info: dict[str, Any] = json.loads(
                await _run("qemu-img", "info", "--output=json", "-f", "qcow2", str(path), what="reading the qcow2")
            )
        except StorageError as exc:
            raise StorageError(f"not a usable qcow2 image: {exc}") from None
        if info.get("backing-filename"):
            # a backing file in an uploaded image would let it read any file on the host
            raise StorageError("qcow2 images with a backing file are refused")
        data = info.get("format-specific", {}).get("data", {})
        if data.get("data-file"):
            raise StorageError("qcow2 images with an external data file are refused")
        if data.get("encrypt") or info.get("encrypted"):
            raise StorageError("encrypted qcow2 images are refused")
        return info

    async def finalize_image(self, image_id: str) -> StoredImage:
        name = self.image_name(image_id)
        folder = self._local_dir(image_id)
        kernel, initrd = folder / "kernel", folder / "initrd"
        if initrd.exists() and not kernel.exists():
            raise StorageError("an initrd was uploaded without a kernel")

        def finalize(ioctx: Any) -> tuple[str, int, int]:
            import rbd

            try:
                image_cm = self._open(ioctx, name)
                image = image_cm.__enter__()
            except rbd.ImageNotFound:
                raise StorageError("the image has no disk part: upload one before activating") from None
            try:
                size = image.size()
                fmt = detect_format(image.read(0, min(HEAD_BYTES, size))) if size else "raw"
                snaps = {s["name"] for s in image.list_snaps()}
                if BASE_SNAPSHOT not in snaps:
                    image.create_snap(BASE_SNAPSHOT)
                if not image.is_protected_snap(BASE_SNAPSHOT):
                    image.protect_snap(BASE_SNAPSHOT)
                return fmt, self._used_bytes(image, size), size
            finally:
                image_cm.__exit__(None, None, None)

        fmt, used, size = await self._call(f"finalizing {name}", finalize)
        return StoredImage(
            image_id=image_id,
            path=self.reference(name),
            format=fmt,
            size_bytes=used,
            virtual_size_bytes=size,
            kernel_path=str(kernel) if kernel.exists() else None,
            initrd_path=str(initrd) if initrd.exists() else None,
        )

    async def delete_image(self, image_id: str, *, flatten: bool = False) -> None:
        """Delete an image. Refused while disks are cloned from it, unless ``flatten``.

        With ``flatten`` every clone first gets its own copy of the data it shares
        (this takes time proportional to the data), then the image goes.
        """
        name = self.image_name(image_id)

        def delete(ioctx: Any) -> None:
            try:
                self._remove(ioctx, name, flatten_children=flatten)
            except HasClonesError as exc:
                raise HasClonesError(
                    f"image {image_id} has clones (disks {', '.join(exc.clones)}); delete them or flatten them first",
                    exc.clones,
                ) from None

        await self._call(f"deleting image {image_id}", delete)
        folder = self._local_dir(image_id)
        for part in LOCAL_PARTS:
            (folder / part).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    async def image_exists(self, image_id: str) -> bool:
        name = self.image_name(image_id)
        return await self._call(f"looking up {name}", lambda io: self._exists(io, name))

    async def image_clones(self, image_id: str) -> list[str]:
        """Disk ids cloned from the image."""
        name = self.image_name(image_id)

        def clones(ioctx: Any) -> list[str]:
            with self._open(ioctx, name, read_only=True) as image:
                if BASE_SNAPSHOT not in {s["name"] for s in image.list_snaps()}:
                    return []
                return self._children(image, BASE_SNAPSHOT)

        return await self._call(f"listing the clones of {name}", clones)

    # ------------------------------------------------------------------ disks
    def _image_name_from(self, image: StoredImage) -> str:
        """The RBD name of a stored image, if it lives in our pool (its user and conf may have changed)."""
        name = self.image_name(image.image_id)
        if not image.path.startswith(f"rbd:{_escape(self.pool)}/{_escape(name)}:"):
            raise StorageError(f"image {image.image_id} is not stored in RBD pool {self.pool!r} ({image.path})")
        return name

    async def clone_disk(self, disk_id: str, image: StoredImage, size_bytes: int) -> StoredDisk:
        if image.format == "iso":
            return await self.create_blank_disk(disk_id, size_bytes)
        parent = self._image_name_from(image)
        name = self.disk_name(disk_id)

        def clone(ioctx: Any) -> int:
            import rbd

            # No existence check first and no open unless the disk must grow: every round
            # trip to the OSDs counts here. A retry finds the name taken at the rename.
            def make(partial: str) -> int:
                try:
                    rbd.RBD().clone(ioctx, parent, BASE_SNAPSHOT, ioctx, partial)
                except rbd.ImageNotFound:
                    raise StorageError(f"image {image.image_id} is not in pool {self.pool!r}") from None
                except rbd.InvalidArgument:
                    raise StorageError(f"image {image.image_id} has no protected snapshot {BASE_SNAPSHOT!r}") from None
                if size_bytes <= image.virtual_size_bytes:
                    return image.virtual_size_bytes  # a clone is as big as its parent snapshot
                with self._open(ioctx, partial) as disk:
                    disk.resize(size_bytes)
                return size_bytes

            try:
                return self._make_then_rename(ioctx, name, make)
            except rbd.ImageExists:
                return self._existing_clone(ioctx, name, parent, size_bytes)

        size = await self._call(f"cloning image {image.image_id} to disk {disk_id}", clone)
        return StoredDisk(disk_id=disk_id, path=self.reference(name), format="raw", virtual_size_bytes=size)

    def _make_then_rename(self, ioctx: Any, final: str, make: Callable[[str], T]) -> T:
        """Build an image under a temporary name, then rename it: ``final`` is whole or absent.

        If Ceph fails half-way, the temporary image is removed here if Ceph still answers,
        else later by sweep_partials. Raises rbd.ImageExists if ``final`` appeared meanwhile.
        """
        import rbd

        partial = self._partial_name(final)
        try:
            result = make(partial)
            rbd.RBD().rename(ioctx, partial, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self._remove(ioctx, partial)
            raise
        return result

    def _existing_clone(self, ioctx: Any, name: str, parent: str, size_bytes: int) -> int:
        """A retried clone finds its disk already there: fine if it is the same clone."""
        with self._open(ioctx, name, read_only=True) as disk:
            try:
                spec = disk.get_parent_image_spec()
            except Exception:
                spec = {}
            if spec.get("image_name") != parent or spec.get("snap_name") != BASE_SNAPSHOT:
                raise StorageError(f"disk {name} already exists and is not a clone of {parent}")
            size = int(disk.size())
        if size < size_bytes:
            with self._open(ioctx, name) as disk:
                disk.resize(size_bytes)
            size = size_bytes
        return size

    async def create_blank_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        name = self.disk_name(disk_id)

        def create(ioctx: Any) -> None:
            import rbd

            if self._exists(ioctx, name):
                raise StorageError(f"disk {disk_id} already exists")
            try:
                self._make_then_rename(
                    ioctx, name, lambda partial: rbd.RBD().create(ioctx, partial, size_bytes, old_format=False)
                )
            except rbd.ImageExists:
                raise StorageError(f"disk {disk_id} already exists") from None

        await self._call(f"creating disk {disk_id}", create)
        return StoredDisk(disk_id=disk_id, path=self.reference(name), format="raw", virtual_size_bytes=size_bytes)

    async def delete_disk(self, disk_id: str) -> None:
        name = self.disk_name(disk_id)
        await self._call(f"deleting disk {disk_id}", lambda io: self._remove(io, name))

    async def disk_exists(self, disk_id: str) -> bool:
        name = self.disk_name(disk_id)
        return await self._call(f"looking up disk {disk_id}", lambda io: self._exists(io, name))

    async def disk_info(self, disk_id: str) -> StoredDisk:
        name = self.disk_name(disk_id)

        def info(ioctx: Any) -> int:
            import rbd

            try:
                with self._open(ioctx, name, read_only=True) as disk:
                    return int(disk.size())
            except rbd.ImageNotFound:
                raise StorageError(f"disk {disk_id} does not exist") from None

        size = await self._call(f"reading disk {disk_id}", info)
        return StoredDisk(disk_id=disk_id, path=self.reference(name), format="raw", virtual_size_bytes=size)

    async def disk_parent(self, disk_id: str) -> str | None:
        """The image id a disk is still cloned from, None once flattened (or for a blank disk)."""
        name = self.disk_name(disk_id)

        def parent(ioctx: Any) -> str | None:
            import rbd

            with self._open(ioctx, name, read_only=True) as disk:
                try:
                    spec = disk.get_parent_image_spec()
                except rbd.ImageNotFound:
                    return None
            image_name = str(spec.get("image_name", ""))
            return image_name[len(IMAGE_PREFIX) :] if image_name.startswith(IMAGE_PREFIX) else image_name

        return await self._call(f"reading the parent of disk {disk_id}", parent)

    async def resize_disk(self, disk_id: str, size_bytes: int) -> StoredDisk:
        """Grow a disk (shrinking would cut off guest data, so it is refused)."""
        name = self.disk_name(disk_id)

        def resize(ioctx: Any) -> None:
            with self._open(ioctx, name) as disk:
                size = disk.size()
                if size_bytes < size:
                    raise StorageError(f"disk {disk_id} is {size} bytes; shrinking it to {size_bytes} is refused")
                if size_bytes > size:
                    disk.resize(size_bytes)

        await self._call(f"resizing disk {disk_id}", resize)
        return StoredDisk(disk_id=disk_id, path=self.reference(name), format="raw", virtual_size_bytes=size_bytes)

    async def flatten_disk(self, disk_id: str) -> None:
        """Give a clone its own copy of the shared data, so it no longer depends on its image."""
        name = self.disk_name(disk_id)

        def flatten(ioctx: Any) -> None:
            with self._open(ioctx, name) as disk:
                disk.flatten()

        await self._call(f"flattening disk {disk_id}", flatten)

    # ------------------------------------------------------------------ snapshots
    async def snapshot_create(self, disk_id: str, snapshot: str) -> DiskSnapshot:
        name = self.disk_name(disk_id)
        self._checked("snapshot", snapshot)

        def create(ioctx: Any) -> DiskSnapshot:
            import rbd

            with self._open(ioctx, name) as disk:
                try:
                    disk.create_snap(snapshot)
                except rbd.ImageExists:
                    raise StorageError(f"disk {disk_id} already has a snapshot {snapshot!r}") from None
                return self._snapshot_of(disk, snapshot)

        return await self._call(f"snapshotting disk {disk_id}", create)

    @staticmethod
    def _snapshot_of(disk: Any, snapshot: str) -> DiskSnapshot:
        for snap in disk.list_snaps():
            if snap["name"] == snapshot:
                return DiskSnapshot(
                    name=snapshot,
                    size_bytes=int(snap["size"]),
                    protected=bool(disk.is_protected_snap(snapshot)),
                    created=disk.get_snap_timestamp(snap["id"]),
                )
        raise StorageError(f"no snapshot {snapshot!r}")

    async def snapshot_list(self, disk_id: str) -> list[DiskSnapshot]:
        name = self.disk_name(disk_id)

        def snapshots(ioctx: Any) -> list[DiskSnapshot]:
            with self._open(ioctx, name, read_only=True) as disk:
                return [self._snapshot_of(disk, s["name"]) for s in disk.list_snaps()]

        return await self._call(f"listing the snapshots of disk {disk_id}", snapshots)

    async def snapshot_rollback(self, disk_id: str, snapshot: str) -> None:
        """Put the disk's data back as it was at ``snapshot``. Refused while a VM has the disk open."""
        name = self.disk_name(disk_id)

        def rollback(ioctx: Any) -> None:
            with self._open(ioctx, name) as disk:
                self._refuse_if_open_by_others(disk, f"disk {disk_id}", "roll it back")
                if snapshot not in {s["name"] for s in disk.list_snaps()}:
                    raise StorageError(f"disk {disk_id} has no snapshot {snapshot!r}")
                disk.rollback_to_snap(snapshot)

        await self._call(f"rolling back disk {disk_id} to {snapshot}", rollback)

    @staticmethod
    def _refuse_if_open_by_others(image: Any, what: str, action: str) -> None:
        """Our own read-write handle is one watcher; any other is a VM or another client."""
        if len(list(image.watchers_list())) > 1:
            raise StorageError(f"{what} is in use (a VM or another client has it open); stop it to {action}")

    async def snapshot_delete(self, disk_id: str, snapshot: str) -> None:
        """Delete a snapshot; deleting one that is not there is not an error."""
        name = self.disk_name(disk_id)

        def delete(ioctx: Any) -> None:
            with self._open(ioctx, name) as disk:
                if snapshot not in {s["name"] for s in disk.list_snaps()}:
                    return
                children = sorted(self._disk_id_of(p, c) for p, c in self._child_specs(disk, snapshot))
                if children:
                    raise HasClonesError(
                        f"snapshot {snapshot!r} of disk {disk_id} has clones: {', '.join(children)}", children
                    )
                if disk.is_protected_snap(snapshot):
                    disk.unprotect_snap(snapshot)
                disk.remove_snap(snapshot)

        await self._call(f"deleting snapshot {snapshot} of disk {disk_id}", delete)

    # ------------------------------------------------------------------ export / import
    def export_disk(
        self, disk_id: str, *, snapshot: str | None = None, chunk_bytes: int = BLOCK_BYTES
    ) -> AsyncIterator[bytes]:
        """The disk's bytes (or a snapshot's), as a stream of chunks; holes come out as zeros."""
        what = f"snapshot {snapshot!r} of disk {disk_id}" if snapshot else f"disk {disk_id}"
        return self._export(self.disk_name(disk_id), snapshot, what, chunk_bytes)

    def export_image(self, image_id: str, *, chunk_bytes: int = BLOCK_BYTES) -> AsyncIterator[bytes]:
        """The image as imported (raw), read from its protected snapshot ``base``."""
        return self._export(self.image_name(image_id), BASE_SNAPSHOT, f"image {image_id}", chunk_bytes)

    async def _export(self, name: str, snapshot: str | None, what: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        holder: dict[str, Any] = {}

        def open_image(ioctx: Any) -> int:
            import rbd

            try:
                holder["image"] = rbd.Image(ioctx, name, snapshot=snapshot, read_only=True)
            except rbd.ImageNotFound:
                raise StorageError(f"{what} does not exist") from None
            return int(holder["image"].size())

        def read(offset: int, length: int, _ioctx: Any) -> bytes:
            return bytes(holder["image"].read(offset, length))

        size = await self._call(f"opening {what} for export", open_image)
        try:
            offset = 0
            while offset < size:
                length = min(chunk_bytes, size - offset)
                data = await self._call(f"reading {what}", functools.partial(read, offset, length))
                if len(data) != length:
                    raise StorageError(f"reading {what}: short read at {offset}")
                yield data
                offset += length
        finally:
            await asyncio.to_thread(holder["image"].close)

    # ------------------------------------------------------------------ usage
    async def usage(self) -> PoolUsage:
        """The pool's figures from ``ceph df`` when a manager provides them, else Bramble's images.

        ``df``, ``get_cluster_stats`` and ``ioctx.get_stats`` all come from the manager's
        placement-group statistics; a cluster without a manager answers them with zeros. Then
        the used bytes are the allocated objects of Bramble's RBD images (``diff_iterate``, fast
        with the object map), and the capacity is the pool's quota (``osd dump``) if it has one.
        """

        def measure(ioctx: Any) -> PoolUsage:
            import rbd

            quota = None
            for pool in self._mon_json({"prefix": "osd dump", "format": "json"}).get("pools", []):
                if pool.get("pool_name") == self.pool:
                    quota = int(pool.get("quota_max_bytes") or 0) or None
            df = self._mon_json({"prefix": "df", "format": "json"})
            if df.get("stats", {}).get("num_osds"):
                for pool in df.get("pools", []):
                    if pool.get("name") == self.pool:
                        stats = pool.get("stats", {})
                        stored = int(stats.get("stored", stats.get("bytes_used", 0)))
                        max_avail = int(stats.get("max_avail", 0))
                        available = min(max_avail, max(0, quota - stored)) if quota else max_avail
                        return PoolUsage(
                            used_bytes=stored,
                            capacity_bytes=quota or stored + max_avail,
                            available_bytes=available,
                            source="ceph df",
                            raw_used_bytes=int(stats.get("bytes_used", 0)),
                            quota_bytes=quota,
                        )
            used = 0
            for name in rbd.RBD().list(ioctx):
                if not name.startswith((IMAGE_PREFIX, DISK_PREFIX, PARTIAL_PREFIX)):
                    continue
                try:
                    with self._open(ioctx, name, read_only=True) as image:
                        used += self._used_bytes(image, image.size())
                except rbd.ImageNotFound:
                    continue  # removed while we counted
            return PoolUsage(
                used_bytes=used,
                capacity_bytes=quota,
                available_bytes=max(0, quota - used) if quota else None,
                source="allocated objects of Bramble's RBD images (ceph df has no figures without a manager)",
                quota_bytes=quota,
            )

        return await self._call(f"measuring pool {self.pool!r}", measure)

    async def check(self) -> None:
        """Connect, open the pool and list it: proves the key, the pool and an answering OSD,
        without measuring every image as ``usage`` does."""

        def listing(ioctx: Any) -> None:
            import rbd

            rbd.RBD().list(ioctx)

        await self._call(f"listing pool {self.pool!r}", listing)

    def _mon_json(self, command: dict[str, Any]) -> dict[str, Any]:
        """A monitor command's JSON answer; {} when the monitor refuses it (a restricted user may)."""
        ret, out, _status = self._cluster.mon_command(json.dumps(command), b"", timeout=self.op_timeout)
        if ret == -errno.ETIMEDOUT:
            raise StorageUnavailable(f"{command['prefix']}: Ceph did not answer within {self.op_timeout} s")
        if ret != 0:
            return {}
        try:
            answer = json.loads(out)
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    async def import_disk(self, disk_id: str, chunks: AsyncIterator[bytes]) -> StoredDisk:
        """Create a disk from a raw byte stream (as export_disk makes). Refused if the disk exists."""
        name = self.disk_name(disk_id)
        if await self.disk_exists(disk_id):
            raise StorageError(f"disk {disk_id} already exists")
        size = await self._stream_into_new_image(name, chunks, replace=False)
        return StoredDisk(disk_id=disk_id, path=self.reference(name), format="raw", virtual_size_bytes=size)


async def _run(*argv: str, what: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        raise StorageError(f"{argv[0]} is not installed") from None
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"{argv[0]} failed ({proc.returncode})"
        raise StorageError(f"{what}: {message}")
    return out.decode()
