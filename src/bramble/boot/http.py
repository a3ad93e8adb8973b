"""HTTP boot server: per-machine iPXE scripts and boot files (kernels, initrds, images).

iPXE fetches its script and then the kernel and initrd over HTTP, which is several times faster
than TFTP on the same link. The server runs in-process (uvicorn on the caller's event loop, no
signal handling of its own), serves only below its files root, answers bad requests with a 4xx
and a one-line message, and reports every request as one `HttpBootEvent` instead of an access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from bramble.boot.confine import opened_below

__all__ = ["BootHttpServer", "HttpBootEvent", "normalise_mac"]

log = logging.getLogger(__name__)

# iPXE's ${net0/mac} is colon-separated, ${net0/mac:hexhyp} hyphen-separated; accept both, any case.
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
_SHUTDOWN_GRACE_SECONDS = 3

ScriptFor = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class HttpBootEvent:
    """One finished HTTP request, small enough to become an audit event."""

    client: str
    method: str
    path: str
    mac: str | None
    status: int
    bytes_sent: int
    range: str | None
    seconds: float


def normalise_mac(text: str) -> str | None:
    """``aa:bb:..`` (lower case) for a colon- or hyphen-separated MAC, else None."""
    if not _MAC.match(text):
        return None
    return text.lower().replace("-", ":")


class _BootFile(FileResponse):
    """Serves the descriptor ``open_under`` checked (through its /proc/self/fd path, which names that
    open file, not a path to look up again), and closes it when the response is done."""

    # Starlette's 64 KiB default costs a thread hop per chunk; 1 MiB keeps a 32 MiB kernel fast.
    chunk_size = 1024 * 1024

    def __init__(self, fd: int, info: os.stat_result) -> None:
        super().__init__(f"/proc/self/fd/{fd}", stat_result=info, media_type="application/octet-stream")
        self._fd: int | None = fd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _text(status: int, message: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=status)


def open_under(root: Path, requested: str) -> tuple[int, os.stat_result]:
    """An open descriptor of the regular file ``requested`` names below ``root``, or `_Refused` with a 4xx.

    The request path is rejected outright when it is absolute or has ``..``/``.``/empty parts or a
    NUL; what is left is resolved (following symlinks) and must still lie below the resolved root,
    and so must the file actually opened (`opened_below`): the caller serves that descriptor.
    """
    if "\0" in requested:
        raise _Refused(400, "bad path: NUL byte")
    if requested.startswith("/") or requested.startswith("\\"):
        raise _Refused(403, "absolute paths are not served")
    parts = requested.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _Refused(403, "paths with '.', '..' or empty parts are not served")
    real_root = root.resolve()
    try:
        target = (real_root / PurePosixPath(*parts)).resolve(strict=True)
    except FileNotFoundError:
        raise _Refused(404, f"not found: {requested}") from None
    except (OSError, RuntimeError):  # symlink loops, too long names, permission
        raise _Refused(404, f"not found: {requested}") from None
    if not target.is_relative_to(real_root):
        raise _Refused(403, f"outside the files root: {requested}")
    try:
        # O_NONBLOCK: opening a FIFO someone put there must not hang a worker thread
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError:
        raise _Refused(403, f"not readable: {requested}") from None
    except OSError:
        raise _Refused(404, f"not found: {requested}") from None
    try:
        if not opened_below(fd, real_root):  # the tree changed between the check and the open
            raise _Refused(403, f"outside the files root: {requested}")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(404, f"not a file: {requested}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the hosting daemon owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BootHttpServer:
    """Serves ``GET /boot/<mac>.ipxe`` from ``script_for`` and ``GET|HEAD /files/<path>`` from ``files_root``.

    ``script_for(mac, client_ip)`` gets the MAC normalised to lower-case colon form and returns the
    script, or None (or raises LookupError) when the machine is unknown, which answers 404.
    """

    def __init__(
        self,
        files_root: Path,
        script_for: ScriptFor,
        host: str = "0.0.0.0",
        port: int = 8080,
        on_event: Callable[[HttpBootEvent], None] | None = None,
    ) -> None:
        self.files_root = Path(files_root)
        self._script_for = script_for
        self._host, self._requested_port = host, port
        self._on_event = on_event
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._app = Starlette(
            routes=[
                Route("/boot/{name}", self._boot_script, methods=["GET"]),
                Route("/files/{path:path}", self._file, methods=["GET", "HEAD"]),
            ]
        )

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0)."""
        if self._socket is None:
            raise RuntimeError("server not started")
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,  # events name the real peer; a boot network has no proxies
            access_log=False,
            log_config=None,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="bramble-boot-http")
        while not server.started:
            if self._task.done():
                self._task.result()  # re-raise the start-up failure
                raise RuntimeError("boot HTTP server stopped during start-up")
            await asyncio.sleep(0.005)
        log.info("boot HTTP server on %s:%d serving %s", self._host, self.port, self.files_root)

    async def close(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server, self._task = None, None
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    # --- ASGI: one event per request ---------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.monotonic()
        status, sent = 0, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self._app(scope, receive, counting_send)
        except Exception:  # never a traceback to the client or the log; the event says 500
            log.exception("boot HTTP request %s %s failed", scope.get("method"), scope.get("path"))
            if status == 0:
                status = 500
                with contextlib.suppress(Exception):
                    await _text(500, "internal error")(scope, receive, counting_send)
        finally:
            self._emit(scope, status, sent, time.monotonic() - started)

    def _emit(self, scope: Scope, status: int, sent: int, seconds: float) -> None:
        if self._on_event is None:
            return
        client = scope.get("client") or ("", 0)
        path: str = scope.get("path", "")
        mac = None
        if path.startswith("/boot/") and path.endswith(".ipxe"):
            mac = normalise_mac(path[len("/boot/") : -len(".ipxe")])
        range_header = None
        for key, value in scope.get("headers", []):
            if key == b"range":
                range_header = value.decode("latin-1")
        event = HttpBootEvent(
            client=str(client[0]),
            method=str(scope.get("method", "")),
            path=path,
            mac=mac,
            status=status,
            bytes_sent=sent,
            range=range_header,
            seconds=seconds,
        )
        try:
            self._on_event(event)
        except Exception:
            log.exception("boot HTTP on_event callback failed")

    # --- routes --------------------------------------------------------------------------------

    async def _boot_script(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        if not name.endswith(".ipxe"):
            return _text(404, f"unknown boot path: {request.url.path}")
        mac = normalise_mac(name[: -len(".ipxe")])
        if mac is None:
            return _text(400, f"bad MAC address in {name!r}: want aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff")
        client_ip = request.client.host if request.client else ""
        try:
            script = self._script_for(mac, client_ip)
        except LookupError:
            script = None
        if script is None:
            return _text(404, f"no boot script for {mac}")
        return PlainTextResponse(script, headers={"cache-control": "no-store"})

    async def _file(self, request: Request) -> Response:
        requested: str = request.path_params["path"]
        try:
            fd, info = await asyncio.to_thread(open_under, self.files_root, requested)
        except _Refused as refused:
            return _text(refused.status, refused.message)
        return _BootFile(fd, info)
