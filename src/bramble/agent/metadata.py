"""The EC2-style metadata service at 169.254.169.254, answered by the agent for the VMs on its node.

Each network's VMs reach it through the network driver's DNAT (``MetadataTarget``): one listener
per network, bound to the network's gateway address with a port the kernel picks (``IP_FREEBIND``,
so it can bind before the bridge holds the address). The listener therefore knows the network, and
the source address names the NIC; the firewall pins every tap to its MAC and address, so a guest
cannot pose as another. A caller that is no VM's NIC on that network gets 404, never someone
else's data. Answers come from the specs the agent runs (no control-plane round trip), so the
service keeps answering while the API is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import uvicorn
from starlette.types import Receive, Scope, Send

from bramble.compute.driver import CloudInit, NicAttachment, VmSpec
from bramble.network.driver import MetadataTarget

log = logging.getLogger(__name__)

_SHUTDOWN_GRACE_SECONDS = 1
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; missing from some Python builds' socket module


@dataclass(frozen=True)
class MetadataRequest:
    """One request, for the audit log: who asked (by address and network), what, and the status."""

    network_id: str
    client: str
    path: str
    status: int
    vm_id: str | None
    vm_name: str | None


@dataclass(frozen=True)
class _Known:
    name: str
    data: CloudInit
    nic: NicAttachment


def key_label(key: str, index: int) -> str:
    """EC2 lists keys as ``0=name``; an OpenSSH key's comment is the nearest thing to a name."""
    parts = key.split(None, 2)
    return parts[2].split()[0] if len(parts) == 3 and parts[2].strip() else f"key{index}"


def render(known: _Known, path: str) -> str | None:
    """The body for ``path`` (trailing slash optional), or None when there is no such item."""
    data = known.data
    meta = {
        "instance-id": data.instance_id,
        "hostname": data.hostname,
        "local-hostname": data.hostname,
        "local-ipv4": known.nic.address,
    }
    keys = data.public_keys
    parts = [p for p in path.split("/") if p]
    if parts in ([], ["latest"]):
        return "meta-data/\nuser-data\n" if parts else "latest\n"
    if parts[0] != "latest":
        return None
    if parts[1:] == ["user-data"]:
        return data.user_data
    if parts[1:2] != ["meta-data"]:
        return None
    item = parts[2:]
    if not item:
        return "\n".join([*meta, *(["public-keys/"] if keys else [])]) + "\n"
    if len(item) == 1 and item[0] in meta:
        return meta[item[0]]
    if item[0] != "public-keys" or not keys:
        return None
    if len(item) == 1:
        return "".join(f"{i}={key_label(k, i)}\n" for i, k in enumerate(keys))
    if not item[1].isdigit() or int(item[1]) >= len(keys):
        return None
    if len(item) == 2:
        return "openssh-key\n"
    if item[2:] == ["openssh-key"]:
        return keys[int(item[1])] + "\n"
    return None


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the hosting daemon owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Listener:
    def __init__(self, sock: socket.socket, server: _EmbeddedServer, task: asyncio.Task[None]) -> None:
        self.sock, self.server, self.task = sock, server, task

    @property
    def target(self) -> MetadataTarget:
        host, port = self.sock.getsockname()[:2]
        return MetadataTarget(address=IPv4Address(host), port=int(port))

    async def close(self) -> None:
        self.server.should_exit = True
        try:
            await self.task
        finally:
            self.sock.close()


class MetadataService:
    """Per-network listeners plus the VMs they answer about (registered by the agent as it plugs them)."""

    def __init__(self, on_request: Callable[[MetadataRequest], Awaitable[None]] | None = None) -> None:
        self.on_request = on_request
        self._vms: dict[str, tuple[str, CloudInit, tuple[NicAttachment, ...]]] = {}
        self._listeners: dict[str, _Listener] = {}
        self._lock = asyncio.Lock()

    # --- who is who --------------------------------------------------------------------------
    def register(self, spec: VmSpec) -> None:
        if spec.cloud_init is not None:
            self._vms[spec.vm_id] = (spec.name, spec.cloud_init, spec.nics)

    def forget(self, vm_id: str) -> None:
        self._vms.pop(vm_id, None)

    def lookup(self, network_id: str, address: str) -> tuple[str, _Known] | None:
        """The VM whose NIC on ``network_id`` has ``address`` (the DNAT keeps the guest's source address)."""
        for vm_id, (name, data, nics) in self._vms.items():
            for nic in nics:
                if nic.network_id == network_id and nic.address == address:
                    return vm_id, _Known(name, data, nic)
        return None

    # --- listeners ---------------------------------------------------------------------------
    async def listen(self, network_id: str, address: IPv4Address | str, port: int = 0) -> MetadataTarget:
        """The network's listener (started on first use); its address:port is the DNAT target."""
        async with self._lock:
            listener = self._listeners.get(network_id)
            if listener is None:
                listener = await self._start(network_id, str(address), port)
                self._listeners[network_id] = listener
            return listener.target

    async def release(self, network_id: str) -> None:
        async with self._lock:
            listener = self._listeners.pop(network_id, None)
        if listener is not None:
            await listener.close()

    async def close(self) -> None:
        for network_id in list(self._listeners):
            await self.release(network_id)

    async def _start(self, network_id: str, address: str, port: int) -> _Listener:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # the gateway address may not be on the bridge yet: the driver adds it after the DNAT is known
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.bind((address, port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(network_id, scope, receive, send)

        config = uvicorn.Config(
            app,
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,  # the source address is the caller's identity: never take it from a header
            access_log=False,
            log_config=None,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"bramble-metadata-{network_id[:8]}")
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise RuntimeError("metadata listener stopped during start-up")
            await asyncio.sleep(0.005)
        log.info("metadata service for network %s on %s:%d", network_id, *sock.getsockname()[:2])
        return _Listener(sock, server, task)

    # --- HTTP --------------------------------------------------------------------------------
    async def _asgi(self, network_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = str((scope.get("client") or ("", 0))[0])
        path = str(scope.get("path", ""))
        found = self.lookup(network_id, client)
        if scope.get("method") not in ("GET", "HEAD"):
            status, body = 405, "only GET\n"
        elif found is None:
            status, body = 404, "no instance at this address on this network\n"
        else:
            answer = render(found[1], path)
            status, body = (200, answer) if answer is not None else (404, "not found\n")
        payload = body.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else payload})
        if self.on_request is not None:
            event = MetadataRequest(
                network_id=network_id,
                client=client,
                path=path[:200],
                status=status,
                vm_id=found[0] if found else None,
                vm_name=found[1].name if found else None,
            )
            try:
                await self.on_request(event)
            except Exception:  # the audit log being away must not break the guest's boot
                log.exception("could not record metadata request %s", event)
