"""Images: server-side import from a URL (a local HTTP server), and the OpenAPI page."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.unit.api.helpers import wait_operation

pytestmark = pytest.mark.anyio


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving tmp_path, stopped after the test."""
    (tmp_path / "disk.img").write_bytes(b"\0" * (3 * 1024 * 1024))
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_import_from_url(api: httpx.AsyncClient, file_server: str) -> None:
    body = {"name": "web", "source_url": f"{file_server}/disk.img", "source_kernel_url": f"{file_server}/vmlinuz"}
    response = await api.post("/v1/images", json=body)
    assert response.status_code == 202, response.text
    op = await wait_operation(api, response.json()["operation"]["id"])
    assert op["status"] == "succeeded", op
    image = (await api.get("/v1/images/web")).json()
    assert (image["status"], image["format"], image["size_bytes"], image["has_kernel"]) == (
        "active",
        "raw",
        3 * 1024 * 1024,
        True,
    )


async def test_import_from_a_missing_url_cleans_up(api: httpx.AsyncClient, file_server: str) -> None:
    response = await api.post("/v1/images", json={"name": "ghost", "source_url": f"{file_server}/nope.img"})
    op = await wait_operation(api, response.json()["operation"]["id"])
    assert op["status"] == "failed" and "404" in op["error"]
    assert (await api.get("/v1/images/ghost")).status_code == 404


async def test_openapi_describes_the_v1_api(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert {"/v1/vms", "/v1/images", "/v1/flavors", "/v1/events", "/v1/operations/{op_id}"} <= set(spec["paths"])
    assert (await api.get("/docs")).status_code == 200


async def test_upload_over_the_limit_is_refused(tmp_path: Path) -> None:
    from bramble.api.app import create_app
    from bramble.daemon import build_services
    from tests.conftest import fake_settings

    services = await build_services(
        fake_settings(tmp_path / "state", storage={"driver": "fake", "max_image_bytes": 1000})
    )
    try:
        transport = httpx.ASGITransport(app=create_app(services.cloud))
        headers = {"Authorization": f"Bearer {services.admin_token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://b.test", headers=headers) as api:
            assert (await api.post("/v1/images", json={"name": "big"})).status_code == 201
            response = await api.put("/v1/images/big/data/disk", content=b"\0" * 4096)
            assert response.status_code == 422
            assert "larger than the limit" in response.json()["error"]["message"]
            assert services.cloud.deps.image_store.images.get((await api.get("/v1/images/big")).json()["id"]) is None  # type: ignore[attr-defined]
    finally:
        await services.close()
