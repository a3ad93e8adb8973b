"""Image import: streamed uploads of local parts, or a followed server-side download."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bramble.cli import client
from bramble.cli.client import Client, Config


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(client, "CHUNK_SIZE", 4096)


def make_file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return path


def test_upload_streams_lazily_in_chunks_with_headers(fake_api, tmp_path, small_chunks) -> None:
    disk = make_file(tmp_path, "disk.qcow2", 10_000)
    seen: list[int] = []

    def on_chunk(n: int) -> None:
        seen.append(n)
        fake_api.progress_calls += 1

    image = fake_api.add_image("deb", status="queued")
    Client(Config("http://api", fake_api.token)).upload(f"/v1/images/{image['id']}/data/disk", disk, on_chunk)
    (upload,) = fake_api.uploads
    assert [len(c) for c in upload.chunks] == [4096, 4096, 1808]
    assert b"".join(upload.chunks) == disk.read_bytes()
    # Chunk k arrives after exactly k progress reports: the file is read while sending.
    assert upload.progress_calls_at_chunk == [0, 1, 2]
    assert seen == [4096, 4096, 1808]
    assert upload.headers["content-type"] == "application/octet-stream"
    assert upload.headers["content-length"] == "10000"
    assert "transfer-encoding" not in upload.headers
    assert upload.headers["authorization"] == f"Bearer {fake_api.token}"


def test_import_files_creates_uploads_each_part_and_activates(fake_api, cli, tmp_path, small_chunks) -> None:
    disk = make_file(tmp_path, "disk.raw", 9000)
    kernel = make_file(tmp_path, "vmlinuz", 5000)
    initrd = make_file(tmp_path, "initrd.img", 100)
    result = cli(
        "image",
        "import",
        str(disk),
        "--name",
        "deb",
        "--kernel",
        str(kernel),
        "--initrd",
        str(initrd),
        "--cmdline",
        "console=ttyS0",
        "--json",
    )
    assert result.exit_code == 0, result.output
    create = next(r for r in fake_api.requests if r.method == "POST" and r.url.path == "/v1/images")
    assert json.loads(create.content) == {"name": "deb", "cmdline": "console=ttyS0"}
    image_id = json.loads(result.stdout)["id"]
    assert [u.path for u in fake_api.uploads] == [
        f"/v1/images/{image_id}/data/{p}" for p in ("disk", "kernel", "initrd")
    ]
    assert [sum(map(len, u.chunks)) for u in fake_api.uploads] == [9000, 5000, 100]
    assert fake_api.requests[-1].url.path == f"/v1/images/{image_id}/activate"
    assert json.loads(result.stdout)["status"] == "active"


def test_failed_activation_removes_the_queued_image(fake_api, cli, error_line, tmp_path) -> None:
    disk = make_file(tmp_path, "disk.raw", 10)
    fake_api.hooks[r"POST /v1/images/[^/]+/activate"] = lambda request: httpx.Response(
        400, json={"error": {"code": "invalid", "message": "disk is not a qcow2 or raw image"}}
    )
    assert error_line(cli("image", "import", str(disk), "-n", "deb")) == "disk is not a qcow2 or raw image"
    assert fake_api.requests[-1].method == "DELETE"
    assert fake_api.images == {}


def test_missing_file_fails_before_any_request(fake_api, cli, error_line, tmp_path) -> None:
    assert error_line(cli("image", "import", str(tmp_path / "nope"), "-n", "deb")).endswith("no such file")
    assert fake_api.requests == []


def test_import_url_sends_urls_and_follows_the_operation(fake_api, cli) -> None:
    result = cli(
        "image",
        "import",
        "https://x/disk.qcow2",
        "-n",
        "deb",
        "--arch",
        "aarch64",
        "--kernel",
        "https://x/vmlinuz",
    )
    assert result.exit_code == 0, result.output
    create = next(r for r in fake_api.requests if r.method == "POST" and r.url.path == "/v1/images")
    assert json.loads(create.content) == {
        "name": "deb",
        "arch": "aarch64",
        "source_url": "https://x/disk.qcow2",
        "source_kernel_url": "https://x/vmlinuz",
    }
    assert len([r for r in fake_api.requests if r.url.path.startswith("/v1/operations/")]) == 2
    assert fake_api.uploads == []
    assert "image deb" in result.stdout
    assert "active" in result.stdout


def test_url_import_failure_is_exit_2(fake_api, cli, error_line) -> None:
    fake_api.op_steps = [("failed", 30.0, None, "HTTP 404 fetching https://x/disk.qcow2")]
    message = error_line(cli("image", "import", "https://x/disk.qcow2", "-n", "deb"))
    assert message == "image.import image/deb failed: HTTP 404 fetching https://x/disk.qcow2"


def test_url_disk_with_local_kernel_is_refused(fake_api, cli, error_line, tmp_path) -> None:
    kernel = make_file(tmp_path, "vmlinuz", 10)
    assert "--kernel must be a URL" in error_line(
        cli("image", "import", "http://x/d", "-n", "d", "--kernel", str(kernel))
    )
    assert fake_api.requests == []


def test_list_show_delete(fake_api, cli) -> None:
    fake_api.add_image("deb")
    listed = cli("image", "list", "--json")
    assert json.loads(listed.stdout) == list(fake_api.images.values())
    shown = cli("image", "show", "deb")
    assert "qcow2" in shown.stdout
    assert "1.2 MiB" in shown.stdout
    gone = cli("image", "delete", "deb", "--json")
    assert json.loads(gone.stdout) == {"deleted": "image/deb"}
    assert fake_api.images == {}


def test_delete_in_use_shows_the_servers_reason(fake_api, cli, error_line) -> None:
    fake_api.hooks[r"DELETE /v1/images/deb"] = lambda request: httpx.Response(
        409, json={"error": {"code": "conflict", "message": "image deb is used by vm web, vm db"}}
    )
    assert error_line(cli("image", "delete", "deb")) == "image deb is used by vm web, vm db"
