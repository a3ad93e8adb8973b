"""The CLI against the real API app, in-process on fake drivers.

The other CLI tests use a hand-written fake of the API; this file catches drift between that
fake (and the CLI) and the real routes. It needs the fake compute driver and skips until
``bramble.compute.fake`` exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from bramble.cli import client, operation

pytest.importorskip("bramble.compute.fake")

from bramble.api.app import create_app
from bramble.daemon import Services, build_services
from tests.conftest import fake_settings

QCOW2 = b"QFI\xfb" + b"\x00" * 4092


class PortalTransport(httpx.BaseTransport):
    """A sync transport for the CLI that runs each request on the app's own event loop."""

    def __init__(self, portal: BlockingPortal, app: object) -> None:
        self.portal = portal
        self.asgi = httpx.ASGITransport(app=app)  # type: ignore[arg-type]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join(request.stream)  # type: ignore[union-attr]  # pull the upload generator

        async def send() -> httpx.Response:
            forwarded = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await self.asgi.handle_async_request(forwarded)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return self.portal.call(send)


@pytest.fixture
def real_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    with start_blocking_portal("asyncio") as portal:
        services = portal.call(build_services, fake_settings(tmp_path / "state"))
        try:
            assert services.admin_token
            monkeypatch.setattr(client, "default_transport", PortalTransport(portal, create_app(services.cloud)))
            monkeypatch.setattr(operation, "POLL_SECONDS", 0.01)
            monkeypatch.setenv("BRAMBLE_TOKEN", services.admin_token)
            yield services
        finally:
            portal.call(services.close)


def ok(result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def test_image_flavor_vm_round_trip(real_api, cli, error_line, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(QCOW2)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    image = json.loads(ok(cli("image", "import", str(disk), "-n", "tiny", "--kernel", str(kernel), "--json")))
    assert (image["status"], image["has_kernel"], image["size_bytes"]) == ("active", True, len(QCOW2))

    ok(cli("flavor", "create", "small", "--cpus", "1", "--memory", "128M", "--disk", "1"))
    vm = json.loads(ok(cli("vm", "create", "web", "--image", "tiny", "--flavor", "small", "--memory", "256", "--json")))
    assert (vm["state"], vm["memory_mib"], vm["flavor_name"]) == ("running", 256, "small")

    assert ok(cli("vm", "stop", "web")).startswith("vm web: stopped")
    assert json.loads(ok(cli("vm", "start", "web", "--json")))["state"] == "running"
    assert [v["name"] for v in json.loads(ok(cli("vm", "list", "--json")))] == ["web"]
    json.loads(ok(cli("vm", "console", "web", "--json")))
    actions = [
        e["action"] for e in json.loads(ok(cli("event", "list", "--target", "vm/web", "--since", "1h", "--json")))
    ]
    assert {"vm.create", "vm.stop", "vm.start"} <= set(actions)
    assert json.loads(ok(cli("node", "list", "--json")))[0]["vms"] == 1

    assert "used" in error_line(cli("image", "delete", "tiny"))  # refused while the VM uses it
    ok(cli("vm", "delete", "web"))
    ok(cli("image", "delete", "tiny"))
    ok(cli("flavor", "delete", "small"))


def test_errors_from_the_real_api_are_one_line(real_api, cli, error_line) -> None:
    assert "not found" in error_line(cli("vm", "show", "ghost"))
    assert "not found" in error_line(
        cli("vm", "create", "web", "-i", "ghost", "--cpus", "1", "-m", "64", "--disk-size", "1")
    )
    assert "not found" in error_line(cli("operation", "show", "nope"))
