"""HTTP boot download throughput: Bramble's BootHttpServer against python http.server and nginx.

One random file (default 32 MiB, the size of a large kernel plus initrd) is served from one temp
root on 127.0.0.1 by: Bramble's ``bramble.boot.http.BootHttpServer`` (in its own Python process,
so the client never shares its event loop), ``python3 -m http.server`` and, when installed,
nginx (``nginx-light``: one worker, sendfile on, access log off), each started in the
foreground by this script on a free port. curl then downloads the file from each server in
turn, in an order that rotates per round: a full GET and a ranged GET of the second half
(``-r N-``, 206). The first download from each server is checked against the file's sha256;
timed ones go to /dev/null and must report the right size and status.

The table shows the median wall time (including curl's start), MiB/s, and Bramble's throughput
as a multiple of each anchor's (>= 1.00x means Bramble is as fast).

    .venv/bin/python bench/http_boot.py [--rounds 5] [--size-mib 32]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _common import (  # bench/ is sys.path[0] when a script runs
    HOST,
    REPO,
    arg_parser,
    install_signal_cleanup,
    kill_pids,
    median,
    print_table,
    temp_dir,
)

FILENAME = "vmlinuz-big"
DOWNLOAD_TIMEOUT = 120.0

# Serve argv[1] on an ephemeral loopback port, print the port, run until SIGTERM/SIGINT.
_RUNNER = r"""
import asyncio, signal, sys
from pathlib import Path
from bramble.boot.http import BootHttpServer

async def main():
    server = BootHttpServer(Path(sys.argv[1]), lambda mac, ip: None, host="127.0.0.1", port=0)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(server.port, flush=True)
    await stop.wait()
    await server.close()

asyncio.run(main())
"""

_NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{ alias {root}/; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


class Servers:
    """The servers under test: children of this process, each stopped by PID on exit."""

    def __init__(self, work: Path, root: Path) -> None:
        self.work, self.root = work, root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start_all(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        bramble = subprocess.Popen([sys.executable, "-c", _RUNNER, str(self.root)], stdout=subprocess.PIPE, env=env)
        self.procs["bramble"] = bramble
        assert bramble.stdout is not None
        line = bramble.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"bramble HTTP runner did not print its port (got {line!r})")
        wait_http(int(line), bramble)
        self.urls["bramble"] = f"http://{HOST}:{int(line)}/files/{FILENAME}"

        port = free_port()
        # The stdlib server serves the current directory; files/ inside work mirrors the URL layout.
        (self.work / "files").symlink_to(self.root)
        argv = ["/usr/bin/python3", "-m", "http.server", "--bind", HOST, str(port)]
        self._start("http.server", argv, port, cwd=self.work)

        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if nginx is None:
            print("note: nginx not found (apt-get install nginx-light); nginx skipped")
            return
        port = free_port()
        (self.work / "nginx-tmp").mkdir()
        conf = self.work / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(work=self.work, port=port, root=self.root))
        self._start("nginx", [nginx, "-p", str(self.work), "-c", str(conf)], port, cwd=self.work)

    def _start(self, name: str, argv: list[str], port: int, cwd: Path) -> None:
        # http.server logs every request to stderr: discard it (an unread pipe would fill and stall it).
        quiet = subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet, cwd=cwd)
        self.procs[name] = proc
        wait_http(port, proc)
        self.urls[name] = f"http://{HOST}:{port}/files/{FILENAME}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.poll() is None:
                kill_pids([proc.pid])


def curl(url: str, out: str, range_from: int | None) -> tuple[float, int, int]:
    """(wall seconds, HTTP status, bytes downloaded) for one curl run."""
    argv = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download}", "--max-time", str(DOWNLOAD_TIMEOUT)]
    if range_from is not None:
        argv += ["-r", f"{range_from}-"]
    started = time.perf_counter()
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT + 10, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"curl {url} exited {done.returncode}: {done.stderr.strip()}")
    status, size = done.stdout.split()
    return seconds, int(status), int(size)


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--size-mib", type=int, default=32)
    args = parser.parse_args()
    install_signal_cleanup()
    size = args.size_mib * 1024 * 1024
    half = size // 2
    with temp_dir("bramble-bench-http-") as work:
        root = work / "root"
        root.mkdir()
        blob = root / FILENAME
        blob.write_bytes(os.urandom(size))
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        servers = Servers(work, root)
        try:
            servers.start_all()
            names = list(servers.urls)
            for name in names:  # correctness first: a byte-identical download from each server
                check = work / f"check-{name}"
                _, status, got = curl(servers.urls[name], str(check), None)
                if status != 200 or hashlib.sha256(check.read_bytes()).hexdigest() != digest:
                    raise RuntimeError(f"{name}: download is not byte-identical (status {status}, {got} bytes)")
                check.unlink()
            cells = {"full GET": (None, 200, size), "range GET (2nd half)": (half, 206, size - half)}
            timings: dict[tuple[str, str], list[float]] = {(c, n): [] for c in cells for n in names}
            no_range: set[str] = set()
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for cell, (range_from, want_status, want_size) in cells.items():
                    for name in order:
                        if range_from is not None and name in no_range:
                            continue
                        seconds, status, got = curl(servers.urls[name], "/dev/null", range_from)
                        if range_from is not None and name != "bramble" and status == 200:
                            no_range.add(name)  # python 3.11's http.server ignores Range
                            continue
                        if (status, got) != (want_status, want_size):
                            raise RuntimeError(f"{name} {cell}: status {status}, {got} bytes")
                        timings[(cell, name)].append(seconds)
        finally:
            servers.stop_all()
    print(f"HTTP boot download, {args.size_mib} MiB, loopback, curl, median of {args.rounds} rounds")
    print(f"host: {os.cpu_count()} CPUs, load {Path('/proc/loadavg').read_text().split()[0]}")
    rows = []
    for cell, (_, _, nbytes) in cells.items():
        bramble_s = median(timings[(cell, "bramble")])
        for name in names:
            if not timings[(cell, name)]:
                rows.append([cell, name, "-", "-", "no Range support"])
                continue
            s = median(timings[(cell, name)])
            ratio = "" if name == "bramble" else f"{s / bramble_s:.2f}x"
            rows.append([cell, name, s, f"{nbytes / s / 2**20:.0f}", ratio])
    print_table("median seconds, MiB/s, Bramble throughput / anchor", ["cell", "server", "s", "MiB/s", "ratio"], rows)


if __name__ == "__main__":
    main()
