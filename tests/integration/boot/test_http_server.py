"""The boot HTTP server against real curl on 127.0.0.1 (server on port 0 per test module)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from bramble.boot.http import BootHttpServer, HttpBootEvent

pytestmark = [pytest.mark.anyio]

BIG = 32 * 1024 * 1024
HOST = "127.0.0.1"
KNOWN_MAC = "52:54:00:12:34:56"


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("httpboot")
    root = base / "root"
    (root / "debian").mkdir(parents=True)
    (root / "debian" / "vmlinuz").write_bytes(os.urandom(BIG))
    (root / "initrd.gz").write_bytes(os.urandom(100_000))
    (root / "debian" / "sub dir").mkdir()
    (root / "debian" / "sub dir" / "a b.txt").write_bytes(b"spaces\n")
    (base / "secret").write_bytes(b"TOP-SECRET-CONTENT")
    (root / "escape").symlink_to(base / "secret")
    (root / "escape-dir").symlink_to(base)
    (root / "inside-link").symlink_to(root / "initrd.gz")
    (root / "loop").symlink_to(root / "loop")
    try:
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _script_for(mac: str, client_ip: str) -> str | None:
    if mac == KNOWN_MAC:
        return f"#!ipxe\necho hello {mac} from {client_ip}\nkernel /files/debian/vmlinuz\nboot\n"
    if mac == "52:54:00:00:00:01":
        raise KeyError(mac)
    if mac == "52:54:00:00:00:02":
        raise ValueError("inventory exploded")
    return None


class Running:
    def __init__(self, server: BootHttpServer, events: list[HttpBootEvent], out: Path) -> None:
        self.server, self.events, self.out = server, events, out

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.server.port}{path}"

    async def curl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = ["curl", "-sS", "--max-time", "60", *args]
        return await anyio.to_thread.run_sync(lambda: subprocess.run(cmd, capture_output=True, timeout=90))

    async def event_count(self, count: int, timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while len(self.events) < count:
                await anyio.sleep(0.01)


@pytest.fixture
async def http(files_root: Path, tmp_path: Path) -> AsyncIterator[Running]:
    events: list[HttpBootEvent] = []
    server = BootHttpServer(files_root, _script_for, host=HOST, port=0, on_event=events.append)
    await server.start()
    try:
        yield Running(server, events, tmp_path)
    finally:
        await server.close()


def _status(done: subprocess.CompletedProcess[bytes]) -> int:
    """The status code curl printed last with ``-w '%{http_code}'``."""
    return int(done.stdout[-3:])


async def test_ipxe_script_for_known_mac(http: Running) -> None:
    done = await http.curl("-i", http.url(f"/boot/{KNOWN_MAC}.ipxe"))
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/plain" in head.lower()
    assert body.decode() == f"#!ipxe\necho hello {KNOWN_MAC} from 127.0.0.1\nkernel /files/debian/vmlinuz\nboot\n"
    await http.event_count(1)
    event = http.events[-1]
    assert (event.method, event.status, event.mac, event.client) == ("GET", 200, KNOWN_MAC, "127.0.0.1")
    assert event.bytes_sent == len(body)


async def test_ipxe_script_mac_forms_are_normalised(http: Running) -> None:
    done = await http.curl(http.url("/boot/52-54-00-12-34-56.ipxe"))
    assert done.stdout.startswith(b"#!ipxe\necho hello 52:54:00:12:34:56")
    done = await http.curl(http.url("/boot/52:54:00:AB:CD:EF.ipxe"))
    assert done.stdout == b"no boot script for 52:54:00:ab:cd:ef\n"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/boot/not-a-mac.ipxe", 400, b"bad MAC address"),
        ("/boot/52:54:00:12:34.ipxe", 400, b"bad MAC address"),
        ("/boot/52:54:00:12:34:56:78.ipxe", 400, b"bad MAC address"),
        ("/boot/52:54-00:12:34:56.ipxe", 400, b"bad MAC address"),
        ("/boot/52:54:00:99:99:99.ipxe", 404, b"no boot script for 52:54:00:99:99:99"),
        ("/boot/52:54:00:00:00:01.ipxe", 404, b"no boot script"),
        ("/boot/52:54:00:12:34:56.txt", 404, b"unknown boot path"),
        ("/nowhere", 404, b"Not Found"),
    ],
)
async def test_bad_boot_requests_are_4xx_with_message(http: Running, path: str, status: int, message: str) -> None:
    done = await http.curl("-w", "%{http_code}", http.url(path))
    assert _status(done) == status
    assert message in done.stdout
    await http.event_count(1)
    assert http.events[-1].status == status


async def test_script_callback_failure_is_500_without_traceback(http: Running) -> None:
    done = await http.curl("-w", "%{http_code}", http.url("/boot/52:54:00:00:00:02.ipxe"))
    assert _status(done) == 500
    assert b"Traceback" not in done.stdout
    await http.event_count(1)
    assert http.events[-1].status == 500


async def test_full_download_is_byte_identical(http: Running, files_root: Path) -> None:
    out = http.out / "vmlinuz"
    done = await http.curl("-o", str(out), "-w", "%{http_code}", http.url("/files/debian/vmlinuz"))
    assert _status(done) == 200
    source = files_root / "debian" / "vmlinuz"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    await http.event_count(1)
    event = http.events[-1]
    assert (event.status, event.bytes_sent, event.range) == (200, BIG, None)


async def test_names_with_spaces_and_inside_symlinks(http: Running, files_root: Path) -> None:
    done = await http.curl(http.url("/files/debian/sub%20dir/a%20b.txt"))
    assert done.stdout == b"spaces\n"
    done = await http.curl(http.url("/files/inside-link"))
    assert done.stdout == (files_root / "initrd.gz").read_bytes()


@pytest.mark.parametrize(
    ("range_arg", "start", "end"),
    [("0-99", 0, 100), ("1000-", 1000, BIG), ("-500", BIG - 500, BIG), (f"{BIG - 1}-{BIG + 99}", BIG - 1, BIG)],
)
async def test_single_ranges(http: Running, files_root: Path, range_arg: str, start: int, end: int) -> None:
    out = http.out / "part"
    done = await http.curl("-r", range_arg, "-D", "-", "-o", str(out), http.url("/files/debian/vmlinuz"))
    headers = done.stdout.decode().lower()
    assert headers.startswith("http/1.1 206")
    assert f"content-range: bytes {start}-{end - 1}/{BIG}" in headers
    with (files_root / "debian" / "vmlinuz").open("rb") as fh:
        fh.seek(start)
        assert out.read_bytes() == fh.read(end - start)
    await http.event_count(1)
    assert (http.events[-1].status, http.events[-1].bytes_sent) == (206, end - start)
    assert http.events[-1].range == f"bytes={range_arg}"


async def test_multiple_ranges_are_multipart(http: Running) -> None:
    done = await http.curl("-r", "0-9,100-109", "-D", "-", http.url("/files/initrd.gz"))
    assert b"206" in done.stdout.split(b"\r\n")[0]
    assert b"multipart/byteranges" in done.stdout


async def test_unsatisfiable_range_is_416(http: Running) -> None:
    done = await http.curl("-r", f"{BIG}-", "-D", "-", "-o", "/dev/null", http.url("/files/debian/vmlinuz"))
    headers = done.stdout.decode().lower()
    assert headers.startswith("http/1.1 416")
    assert f"content-range: bytes */{BIG}" in headers
    await http.event_count(1)
    assert http.events[-1].status == 416


async def test_head_has_length_etag_and_no_body(http: Running) -> None:
    done = await http.curl("-I", http.url("/files/debian/vmlinuz"))
    headers = done.stdout.decode().lower()
    assert headers.startswith("http/1.1 200")
    assert f"content-length: {BIG}" in headers
    assert "etag: " in headers and "last-modified: " in headers and "accept-ranges: bytes" in headers
    await http.event_count(1)
    assert (http.events[-1].method, http.events[-1].bytes_sent) == ("HEAD", 0)


async def test_conditional_if_range_with_stale_etag_sends_whole_file(http: Running) -> None:
    done = await http.curl(
        "-r", "0-9", "-H", 'If-Range: "stale"', "-D", "-", "-o", "/dev/null", http.url("/files/initrd.gz")
    )
    assert done.stdout.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/../secret", 403),
        ("/files/debian/../../secret", 403),
        ("/files/%2e%2e/secret", 403),
        ("/files/debian/%2e%2e/%2e%2e/secret", 403),
        ("/files//etc/passwd", 403),
        ("/files/%2fetc/passwd", 403),
        ("/files/./initrd.gz", 403),
        ("/files/escape", 403),
        ("/files/escape-dir/secret", 403),
        ("/files/loop", 404),
        ("/files/missing.bin", 404),
        ("/files/debian", 404),
        ("/files/", 403),
        ("/files/a%00b", 400),
    ],
)
async def test_traversal_and_bad_paths_are_refused(http: Running, path: str, status: int) -> None:
    done = await http.curl("--path-as-is", "-w", "%{http_code}", http.url(path))
    assert _status(done) == status
    body = done.stdout[:-3]
    assert b"TOP-SECRET" not in body and b"root:x:" not in body
    assert body.strip(), "a refusal carries a message"
    await http.event_count(1)
    assert http.events[-1].status == status


async def test_post_is_405(http: Running) -> None:
    done = await http.curl("-X", "POST", "-w", "%{http_code}", http.url("/files/initrd.gz"))
    assert _status(done) == 405


async def test_garbage_request_line_does_not_break_the_server(http: Running) -> None:
    def send_garbage() -> bytes:
        with socket.create_connection((HOST, http.server.port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01\x00garbage not http\r\n\r\n")
            try:
                return sock.recv(4096)
            except OSError:
                return b""

    reply = await anyio.to_thread.run_sync(send_garbage)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    done = await http.curl(http.url("/files/debian/sub%20dir/a%20b.txt"))
    assert done.stdout == b"spaces\n"


async def test_client_abort_mid_download_is_an_event_and_server_keeps_serving(http: Running) -> None:
    # A rate-limited curl gives up after half a second, far from the end of the 32 MiB file.
    done = await http.curl("-o", "/dev/null", "--limit-rate", "4M", "-m", "0.5", http.url("/files/debian/vmlinuz"))
    assert done.returncode == 28  # curl: operation timed out
    await http.event_count(1)
    assert http.events[-1].bytes_sent < BIG
    done = await http.curl(http.url("/files/debian/sub%20dir/a%20b.txt"))
    assert done.stdout == b"spaces\n"


def _descriptors_into(root: Path) -> list[str]:
    """This process's open files below ``root`` (the server serves the descriptor it checked)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root.resolve()) + "/"):
            found.append(target)
    return found


async def test_every_file_descriptor_is_closed_after_full_ranged_head_refused_and_aborted_requests(
    http: Running, files_root: Path
) -> None:
    for args in (
        ("-o", "/dev/null", http.url("/files/initrd.gz")),
        ("-o", "/dev/null", "-r", "0-99,200-299", http.url("/files/initrd.gz")),
        ("-o", "/dev/null", "-r", "5-9", http.url("/files/inside-link")),
        ("-I", http.url("/files/initrd.gz")),
        ("-o", "/dev/null", "-r", "999999999-", http.url("/files/initrd.gz")),  # 416
        ("-o", "/dev/null", "--limit-rate", "4M", "-m", "0.5", http.url("/files/debian/vmlinuz")),  # aborted
    ):
        await http.curl(*args)
    await http.event_count(6)
    with anyio.fail_after(10):  # the aborted response notices the gone client on its next write
        while _descriptors_into(files_root):
            await anyio.sleep(0.05)


async def test_port_zero_gets_an_ephemeral_port_and_close_frees_it(files_root: Path) -> None:
    server = BootHttpServer(files_root, _script_for, host=HOST, port=0)
    await server.start()
    port = server.port
    assert port > 0
    await server.close()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))
