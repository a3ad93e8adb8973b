"""An in-memory stand-in for the v1 API, reached through an injected httpx transport.

The real API is written in parallel; this fake follows the contract in the CLI brief so the
CLI's behaviour can be tested on its own. End-to-end tests against brambled come later.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from bramble.cli import client, operation
from bramble.cli.main import app

TOKEN = "s3cret"
NOW = "2024-05-01T12:00:00Z"


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "request_id": "req-1"}})


@dataclass
class Upload:
    path: str
    headers: httpx.Headers
    chunks: list[bytes]
    # How many progress callbacks had fired when each chunk reached the transport: proves that
    # the body is produced lazily, chunk by chunk, instead of being read up front.
    progress_calls_at_chunk: list[int]


@dataclass
class FakeApi:
    token: str = TOKEN
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    console: bytes = b"boot: ok\nlogin: "
    requests: list[httpx.Request] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    progress_calls: int = 0
    # What the next operation does after its first poll: (status, progress, message, error).
    op_steps: list[tuple[str, float, str | None, str | None]] = field(
        default_factory=lambda: [("running", 50.0, "working", None), ("succeeded", 100.0, None, None)]
    )
    hooks: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    # ------------------------------------------------------------ helpers
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def find(self, table: dict[str, dict[str, Any]], ref: str) -> dict[str, Any] | None:
        return table.get(ref) or next((row for row in table.values() if row["name"] == ref), None)

    def start_op(self, action: str, target: str) -> dict[str, Any]:
        op_id = self.new_id("op")
        first = {
            "id": op_id,
            "action": action,
            "target": target,
            "status": "pending",
            "progress": 0.0,
            "message": None,
            "error": None,
            "actor": "admin",
            "created_at": NOW,
        }
        steps = [first]
        for status, progress, message, err in self.op_steps:
            done = NOW if status in ("succeeded", "failed") else None
            steps.append(
                first | {"status": status, "progress": progress, "message": message, "error": err, "finished_at": done}
            )
        self.ops[op_id] = steps
        return first

    def add_image(self, name: str, status: str = "active") -> dict[str, Any]:
        image = {
            "id": self.new_id("img"),
            "name": name,
            "arch": "x86_64",
            "status": status,
            "format": "qcow2",
            "size_bytes": 1234567,
            "created_at": NOW,
        }
        self.images[image["id"]] = image
        return image

    def add_vm(self, name: str, state: str = "running") -> dict[str, Any]:
        vm = {
            "id": self.new_id("vm"),
            "name": name,
            "arch": "x86_64",
            "cpus": 2,
            "memory_mib": 2048,
            "disk_gib": 20,
            "image_id": "img-x",
            "image_name": "debian",
            "flavor_name": None,
            "node": "n1",
            "desired_state": state,
            "state": state,
            "state_reason": None,
            "accel": "kvm",
            "pid": 4242,
            "vnc": "127.0.0.1:5900",
            "created_at": NOW,
            "updated_at": NOW,
        }
        self.vms[vm["id"]] = vm
        return vm

    # ------------------------------------------------------------ routing
    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = f"{request.method} {request.url.path}"
        for pattern, hook in self.hooks.items():
            if re.fullmatch(pattern, key):
                return hook(request)
        if request.url.path != "/v1/health" and request.headers.get("authorization") != f"Bearer {TOKEN}":
            return error(401, "unauthorized", "invalid token")
        for pattern, handler in ROUTES:
            match = re.fullmatch(pattern, key)
            if match:
                return handler(self, request, *match.groups())
        return error(404, "not_found", f"no route {key}")

    def body(self, request: httpx.Request) -> Any:
        return json.loads(request.content)


def _health(api: FakeApi, request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})


def _image_create(api: FakeApi, request: httpx.Request) -> httpx.Response:
    data = api.body(request)
    if api.find(api.images, data["name"]):
        return error(409, "conflict", f"image {data['name']} exists")
    image = api.add_image(data["name"], status="importing" if data.get("source_url") else "queued")
    if not data.get("source_url"):
        return httpx.Response(201, json=image)
    image["status"] = "active"  # what the polled operation will have produced
    return httpx.Response(
        202, json={"operation": api.start_op("image.import", f"image/{image['name']}"), "image": image}
    )


def _image_data(api: FakeApi, request: httpx.Request, ref: str, part: str) -> httpx.Response:
    image = api.find(api.images, ref)
    if image is None:
        return error(404, "not_found", f"image {ref} not found")
    image[f"has_{part}"] = True
    return httpx.Response(200, json={"bytes": len(request.content)})


def _image_activate(api: FakeApi, request: httpx.Request, ref: str) -> httpx.Response:
    image = api.find(api.images, ref)
    if image is None:
        return error(404, "not_found", f"image {ref} not found")
    if not image.get("has_disk"):
        return error(400, "invalid", "no disk uploaded")
    image["status"] = "active"
    return httpx.Response(200, json=image)


def _list(table: str) -> Callable[..., httpx.Response]:
    def handler(api: FakeApi, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=list(getattr(api, table).values()))

    return handler


def _get(table: str) -> Callable[..., httpx.Response]:
    def handler(api: FakeApi, request: httpx.Request, ref: str) -> httpx.Response:
        row = api.find(getattr(api, table), ref)
        return httpx.Response(200, json=row) if row else error(404, "not_found", f"{table[:-1]} {ref} not found")

    return handler


def _delete(table: str) -> Callable[..., httpx.Response]:
    def handler(api: FakeApi, request: httpx.Request, ref: str) -> httpx.Response:
        row = api.find(getattr(api, table), ref)
        if row is None:
            return error(404, "not_found", f"{table[:-1]} {ref} not found")
        del getattr(api, table)[row["id"]]
        return httpx.Response(204)

    return handler


def _flavor_create(api: FakeApi, request: httpx.Request) -> httpx.Response:
    data = api.body(request)
    flavor = {"id": api.new_id("flv"), **data}
    api.flavors[flavor["id"]] = flavor
    return httpx.Response(201, json=flavor)


def _vm_create(api: FakeApi, request: httpx.Request) -> httpx.Response:
    data = api.body(request)
    vm = api.add_vm(data["name"], state="running" if data.get("start", True) else "stopped")
    return httpx.Response(202, json={"operation": api.start_op("vm.create", f"vm/{vm['name']}"), "vm": vm})


def _vm_action(api: FakeApi, request: httpx.Request, ref: str, action: str) -> httpx.Response:
    vm = api.find(api.vms, ref)
    if vm is None:
        return error(404, "not_found", f"vm {ref} not found")
    vm["state"] = {"start": "running", "stop": "stopped", "pause": "paused", "resume": "running"}.get(
        action, vm["state"]
    )
    return httpx.Response(202, json={"operation": api.start_op(f"vm.{action}", f"vm/{vm['name']}"), "vm": vm})


def _vm_delete(api: FakeApi, request: httpx.Request, ref: str) -> httpx.Response:
    vm = api.find(api.vms, ref)
    if vm is None:
        return error(404, "not_found", f"vm {ref} not found")
    del api.vms[vm["id"]]
    return httpx.Response(202, json={"operation": api.start_op("vm.delete", f"vm/{vm['name']}")})


def _vm_console(api: FakeApi, request: httpx.Request, ref: str) -> httpx.Response:
    if api.find(api.vms, ref) is None:
        return error(404, "not_found", f"vm {ref} not found")
    size = len(api.console)
    if "offset" in request.url.params:
        start = int(request.url.params["offset"])
    else:
        start = max(0, size - int(request.url.params.get("tail", 16384)))
    return httpx.Response(200, json={"data": api.console[start:].decode(), "offset": size, "size": size})


def _operation(api: FakeApi, request: httpx.Request, op_id: str) -> httpx.Response:
    steps = api.ops.get(op_id)
    if steps is None:
        return error(404, "not_found", f"operation {op_id} not found")
    if len(steps) > 1:
        steps.pop(0)
    return httpx.Response(200, json=steps[0])


def _nodes(api: FakeApi, request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json=[
            {
                "name": "n1",
                "arch": "x86_64",
                "cpus": 8,
                "memory_mib": 16384,
                "accel": "tcg",
                "accel_reason": "/dev/kvm missing",
                "roles": ["api", "agent"],
                "state": "up",
                "last_heartbeat": NOW,
                "vms": 1,
            }
        ],
    )


def _events(api: FakeApi, request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=api.events)


ROUTES: list[tuple[str, Callable[..., httpx.Response]]] = [
    (r"GET /v1/health", _health),
    (r"POST /v1/images", _image_create),
    (r"GET /v1/images", _list("images")),
    (r"PUT /v1/images/([^/]+)/data/(disk|kernel|initrd)", _image_data),
    (r"POST /v1/images/([^/]+)/activate", _image_activate),
    (r"GET /v1/images/([^/]+)", _get("images")),
    (r"DELETE /v1/images/([^/]+)", _delete("images")),
    (r"POST /v1/flavors", _flavor_create),
    (r"GET /v1/flavors", _list("flavors")),
    (r"DELETE /v1/flavors/([^/]+)", _delete("flavors")),
    (r"POST /v1/vms", _vm_create),
    (r"GET /v1/vms", _list("vms")),
    (r"GET /v1/vms/([^/]+)", _get("vms")),
    (r"POST /v1/vms/([^/]+)/actions/(start|stop|reboot|pause|resume)", _vm_action),
    (r"DELETE /v1/vms/([^/]+)", _vm_delete),
    (r"GET /v1/vms/([^/]+)/console", _vm_console),
    (r"GET /v1/operations/([^/]+)", _operation),
    (r"GET /v1/nodes", _nodes),
    (r"GET /v1/events", _events),
]


class StreamingMockTransport(httpx.MockTransport):
    """MockTransport reads the whole body before the handler runs; for uploads, first pull the
    stream chunk by chunk (as a socket would) and record what arrived."""

    def __init__(self, api: FakeApi) -> None:
        super().__init__(api)
        self.api = api

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and isinstance(request.stream, httpx.SyncByteStream):
            chunks, calls = [], []
            for chunk in request.stream:
                calls.append(self.api.progress_calls)
                chunks.append(chunk)
            self.api.uploads.append(Upload(request.url.path, request.headers, chunks, calls))
            request = httpx.Request(request.method, request.url, headers=request.headers, content=b"".join(chunks))
        return super().handle_request(request)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No real config file, no real environment, no real waiting."""
    for name in ("BRAMBLE_URL", "BRAMBLE_TOKEN", "BRAMBLE_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(operation, "POLL_SECONDS", 0)


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setenv("BRAMBLE_TOKEN", TOKEN)
    monkeypatch.setattr(client, "default_transport", StreamingMockTransport(fake))
    return fake


@pytest.fixture
def cli() -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str, **kwargs: Any) -> Result:
        return runner.invoke(app, list(args), **kwargs)

    return invoke


@pytest.fixture
def error_line() -> Callable[[Result], str]:
    """Assert the CLI failed the documented way (exit 2, one `error:` line, no traceback, nothing
    on stdout) and return the message."""

    def check(result: Result) -> str:
        assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        assert "Traceback" not in result.output
        return lines[0].removeprefix("error: ")

    return check
