"""TFTP download throughput: Bramble's TftpServer against tftpd-hpa and atftpd, side by side.

One random file (default 32 MiB) is served from one temp root by three servers on loopback:
Bramble's ``bramble.boot.tftp.TftpServer`` (in its own Python process, so the client and the
server never share an event loop), tftpd-hpa's ``in.tftpd`` and ``atftpd``, each started
in the foreground by this script on a free 127.0.0.1 port. The same client then downloads
the file from every server, per cell of the matrix:

* blksize 512 and 1468, lock-step (windowsize 1), with curl, atftp and (512 only) tftp-hpa;
* blksize 1468 with windowsize 16 (RFC 7440), atftp client: Bramble against atftpd (tftpd-hpa
  5.2 does not implement windowsize and answers in lock-step; it is shown for reference).

Within a round the servers take turns per cell, in an order that rotates from round to
round. Every download is checked against the file's sha256; a mismatch, a non-zero exit or a
timeout counts as a failure and is not timed. The table shows median seconds, MB/s (10^6
bytes) and Bramble's throughput as a multiple of each anchor's (>= 1.00x is the target).

Needs the Debian packages curl, atftp, tftp-hpa (clients), tftpd-hpa (server) and atftpd
(server). tftpd-hpa and atftpd conflict as packages; install tftpd-hpa and unpack atftpd
without installing it (``apt-get download atftpd && dpkg -x atftpd_*.deb /opt/atftpd``, plus
``apt-get install libwrap0``), then pass ``--atftpd /opt/atftpd/usr/sbin/atftpd`` (that path
is also looked up by default). A missing server or client is skipped with a note.

    .venv/bin/python bench/tftp_throughput.py [--rounds 5] [--size-mib 32] [--profile-bramble]

``--profile-bramble`` runs one extra, untimed download per cell from a Bramble server under
cProfile and prints where its CPU time goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _common import (  # bench/ is sys.path[0] when a script runs
    REPO,
    arg_parser,
    install_signal_cleanup,
    kill_pids,
    median,
    print_table,
)

HOST = "127.0.0.1"
FILENAME = "blob.bin"
DOWNLOAD_TIMEOUT = 180.0
ATFTPD_FALLBACK = Path("/opt/atftpd/usr/sbin/atftpd")

# The Bramble server runner: serve argv[1] on an ephemeral loopback port, print the port,
# run until SIGTERM/SIGINT. With argv[4] set, profile the event loop and every thread (each
# transfer runs in its own thread) and dump the merged stats there. argv[5] "python-loop" turns
# the C lock-step loop off (the server's fallback when it was installed without a compiler).
_RUNNER = r"""
import asyncio, cProfile, pstats, signal, sys, threading
from pathlib import Path
import bramble.boot.tftp
from bramble.boot.tftp import TftpServer

root, blksize, windowsize, profile_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if sys.argv[5] == "python-loop":
    bramble.boot.tftp._lockstep_run = None
elif bramble.boot.tftp._lockstep_run is None:
    sys.exit("bramble.boot._lockstep is not built: reinstall with gcc and python3-dev (pip install -e .)")

async def main():
    server = TftpServer(Path(root), host="127.0.0.1", port=0, max_blksize=blksize, max_windowsize=windowsize)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(server.port, flush=True)
    await stop.wait()
    await server.close()

if profile_out:
    thread_profiles = []
    thread_run = threading.Thread.run

    def profiled_run(self):
        profile = cProfile.Profile()
        thread_profiles.append(profile)
        profile.enable()
        try:
            thread_run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(main())
    finally:
        profiler.disable()
        stats = pstats.Stats(profiler)
        for profile in thread_profiles:
            stats.add(profile)
        stats.dump_stats(profile_out)
else:
    asyncio.run(main())
"""


@dataclass(frozen=True)
class Cell:
    client: str
    blksize: int
    windowsize: int = 1

    @property
    def label(self) -> str:
        win = f", window {self.windowsize}" if self.windowsize > 1 else ""
        return f"{self.client}, blksize {self.blksize}{win}"


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- servers
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_tftp_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Send RRQs for a missing file until the server answers (any TFTP packet will do)."""
    rrq = struct.pack("!H", 1) + b"bench-probe-missing\0octet\0"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering")
            s.sendto(rrq, (HOST, port))
            with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                if s.recvfrom(2048)[0][:2] in (b"\0\5", b"\0\6", b"\0\3"):
                    return
    raise RuntimeError(f"no TFTP answer on {HOST}:{port} within {timeout:.0f} s")


class Servers:
    """Starts the servers (children of this process, stopped by PID on exit)."""

    def __init__(self, work: Path, root: Path, atftpd: Path | None, python_loop: bool = False) -> None:
        self.work, self.root, self.atftpd, self.python_loop = work, root, atftpd, python_loop
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start_all(self, max_blksize: int, max_windowsize: int) -> list[str]:
        names = ["bramble"]
        self.ports["bramble"], self.procs["bramble"] = self.start_bramble(max_blksize, max_windowsize)
        if self.python_loop:
            names.append("bramble-py")
            self.ports["bramble-py"], self.procs["bramble-py"] = self.start_bramble(
                max_blksize, max_windowsize, python_loop=True
            )
        if shutil.which("in.tftpd"):
            port = free_udp_port()
            argv = ["in.tftpd", "--foreground", "--address", f"{HOST}:{port}", "--secure"]
            argv += ["--blocksize", str(max_blksize), "--user", "nobody", str(self.root)]
            self._start_external("tftpd-hpa", argv, port)
            names.append("tftpd-hpa")
        else:
            print("note: in.tftpd not found (apt-get install tftpd-hpa); tftpd-hpa skipped")
        if self.atftpd is not None:
            port = free_udp_port()
            argv = [str(self.atftpd), "--daemon", "--no-fork", "--port", str(port), "--bind-address", HOST]
            argv += ["--logfile", str(self.work / "atftpd.log"), "--user", "nobody", "--group", "nogroup"]
            argv += ["--maxthread", "100", str(self.root)]
            self._start_external("atftpd", argv, port)
            names.append("atftpd")
        else:
            print("note: atftpd not found (see the module docstring); atftpd skipped")
        return names

    def start_bramble(
        self, max_blksize: int, max_windowsize: int, profile_out: Path | None = None, python_loop: bool = False
    ) -> tuple[int, subprocess.Popen[bytes]]:
        argv = [sys.executable, "-c", _RUNNER, str(self.root), str(max_blksize), str(max_windowsize)]
        argv += [str(profile_out) if profile_out else "", "python-loop" if python_loop else "c-loop"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=self.work)
        self.procs[f"bramble-{proc.pid}"] = proc  # registered before anything can fail
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"bramble TFTP runner did not print its port (got {line!r})")
        port = int(line)
        wait_tftp_ready(port, proc)
        return port, proc

    def _start_external(self, name: str, argv: list[str], port: int) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=self.work)
        self.procs[name] = proc
        self.ports[name] = port
        wait_tftp_ready(port, proc)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM (so a profiled Bramble can write its stats), then SIGKILL by PID."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        if proc.poll() is None:
            kill_pids([proc.pid])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            self.stop(proc)


# ---------------------------------------------------------------- clients
def client_argv(cell: Cell, port: int, out: Path) -> list[str]:
    if cell.client == "curl":
        url = f"tftp://{HOST}:{port}/{FILENAME}"
        return ["curl", "--silent", "--show-error", "--tftp-blksize", str(cell.blksize), "-o", str(out), url]
    if cell.client == "atftp":
        argv = ["atftp", "--option", f"blksize {cell.blksize}"]
        if cell.windowsize > 1:
            argv += ["--option", f"windowsize {cell.windowsize}"]
        return [*argv, "--get", "-r", FILENAME, "-l", str(out), HOST, str(port)]
    if cell.client == "tftp":  # tftp-hpa: no options at all, so blksize 512 lock-step
        return ["tftp", "-m", "binary", HOST, str(port), "-c", "get", FILENAME, str(out)]
    raise ValueError(cell.client)


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, its threads and its reaped children (tftpd-hpa forks per RRQ)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download(cell: Cell, port: int, out: Path, expect: str) -> tuple[float | None, str]:
    """Seconds for one verified download, or (None, why it failed)."""
    out.unlink(missing_ok=True)
    argv = client_argv(cell, port, out)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=DOWNLOAD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {DOWNLOAD_TIMEOUT:.0f} s"
    seconds = time.perf_counter() - t0
    try:
        if done.returncode != 0:
            err = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            return None, f"exit {done.returncode}: {err[-1] if err else ''}"
        if not out.exists():
            return None, "no output file"
        if sha256(out) != expect:
            return None, f"sha256 mismatch ({out.stat().st_size} bytes)"
        return seconds, ""
    finally:
        out.unlink(missing_ok=True)


# ---------------------------------------------------------------- main
@contextlib.contextmanager
def world_readable_temp_dir() -> Iterator[Path]:
    # The C servers drop to "nobody", so the root and the file must be readable by anyone.
    path = Path(tempfile.mkdtemp(prefix="bramble-bench-tftp-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_matrix(clients: list[str]) -> list[Cell]:
    cells = []
    for blksize in (512, 1468):
        for client in clients:
            if client == "tftp" and blksize != 512:
                continue
            cells.append(Cell(client, blksize))
    if "atftp" in clients:
        cells.append(Cell("atftp", 1468, 16))
    return cells


def profile_bramble(servers: Servers, cells: list[Cell], expect: str, work: Path, top: int) -> None:
    import pstats

    for cell in cells:
        stats_file = work / f"bramble-{cell.client}-{cell.blksize}-{cell.windowsize}.prof"
        port, proc = servers.start_bramble(1468, 64, stats_file)
        try:
            seconds, why = download(cell, port, work / "profile.out", expect)
        finally:
            servers.stop(proc)
        print(f"\ncProfile of the Bramble server process, {cell.label}: download {seconds or why}")
        if stats_file.exists():
            stats = pstats.Stats(str(stats_file))
            stats.sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--size-mib", type=int, default=32, help="size of the random file (default 32)")
    parser.add_argument(
        "--clients", default="curl,atftp,tftp", help="comma-separated, of curl,atftp,tftp (default all)"
    )
    parser.add_argument("--atftpd", type=Path, default=None, help="atftpd binary (default: PATH, then /opt/atftpd)")
    parser.add_argument("--profile-bramble", action="store_true", help="also profile Bramble's server per cell")
    parser.add_argument(
        "--python-loop",
        action="store_true",
        help="also run Bramble with its pure-Python lock-step loop (bramble-py), as without a compiler",
    )
    parser.add_argument("--profile-top", type=int, default=18, help="functions shown per profile (default 18)")
    args = parser.parse_args()
    install_signal_cleanup()

    atftpd = args.atftpd
    if atftpd is None:
        found = shutil.which("atftpd")
        atftpd = Path(found) if found else (ATFTPD_FALLBACK if ATFTPD_FALLBACK.exists() else None)
    clients = [c for c in args.clients.split(",") if c]
    for client in list(clients):
        if shutil.which({"tftp": "tftp"}.get(client, client)) is None:
            print(f"note: client {client} not found; skipped")
            clients.remove(client)
    cells = build_matrix(clients)

    print(
        f"TFTP throughput on {HOST}: {args.size_mib} MiB random file, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, load {Path('/proc/loadavg').read_text().split()[0]}"
    )
    with world_readable_temp_dir() as work:
        root = work / "root"
        root.mkdir(mode=0o755)
        blob = root / FILENAME
        with blob.open("wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        blob.chmod(0o644)
        expect = sha256(blob)
        size = blob.stat().st_size
        out_dir = work / "out"
        out_dir.mkdir()

        servers = Servers(work, root, atftpd, python_loop=args.python_loop)
        try:
            names = servers.start_all(max_blksize=1468, max_windowsize=64)
            print("servers: " + ", ".join(f"{n} on port {servers.ports[n]}" for n in names))
            results = {(cell, name): Result() for cell in cells for name in names}
            for rnd in range(args.rounds):
                t_round = time.monotonic()
                for cell in cells:
                    order = names[rnd % len(names) :] + names[: rnd % len(names)]
                    for name in order:
                        if not servers.alive(name):
                            results[cell, name].failures.append("server not running")
                            continue
                        pid = servers.procs[name].pid
                        cpu0 = server_cpu_seconds(pid)
                        seconds, why = download(cell, servers.ports[name], out_dir / name, expect)
                        if seconds is None:
                            results[cell, name].failures.append(why)
                        else:
                            results[cell, name].seconds.append(seconds)
                            # tftpd-hpa's child may not be reaped yet; a short wait makes that rare.
                            time.sleep(0.05)
                            results[cell, name].server_cpu.append(server_cpu_seconds(pid) - cpu0)
                print(f"round {rnd + 1}/{args.rounds} done in {time.monotonic() - t_round:.1f} s", flush=True)

            report(cells, names, results, size)
            print(f"load average at the end: {Path('/proc/loadavg').read_text().split()[0]}")
            if args.profile_bramble:
                profile_bramble(servers, cells, expect, work, args.profile_top)
        finally:
            servers.stop_all()
    return 0


def report(cells: list[Cell], names: list[str], results: dict[tuple[Cell, str], Result], size: int) -> None:
    rows = []
    failures = []
    for cell in cells:
        med = {n: median(results[cell, n].seconds) for n in names}
        for name in names:
            res = results[cell, name]
            secs = med[name]
            mbps = size / 1e6 / secs if res.seconds else float("nan")
            note = ""
            if name == "tftpd-hpa" and cell.windowsize > 1:
                note = "no windowsize: lock-step"
            vs = ""
            if name != "bramble" and res.seconds and results[cell, "bramble"].seconds:
                vs = f"{secs / med['bramble']:.2f}x"  # Bramble MB/s / anchor MB/s
            ok = f"{len(res.seconds)}/{len(res.seconds) + len(res.failures)}"
            # in.tftpd forks a child per RRQ that its parent does not reap promptly: not measurable.
            cpu = per_block = "n/a"
            if name != "tftpd-hpa" and res.server_cpu:
                cpu = f"{median(res.server_cpu):.2f}"
                per_block = f"{median(res.server_cpu) / (size // cell.blksize + 1) * 1e6:.1f}"
            spread = f"{min(res.seconds):.2f}-{max(res.seconds):.2f}" if res.seconds else ""
            rows.append([cell.label, name, secs, spread, f"{mbps:.1f}", vs, cpu, per_block, ok, note])
            failures += [f"{cell.label}, {name}: {why}" for why in res.failures]
    print_table(
        "TFTP download, median of rounds (Bramble/anchor = Bramble's MB/s over the anchor's; target >= 1.00x)",
        [
            "cell",
            "server",
            "median s",
            "min-max s",
            "MB/s",
            "Bramble/anchor",
            "server CPU s",
            "CPU us/block",
            "ok",
            "note",
        ],
        rows,
    )
    if failures:
        print("\nfailures (not timed):")
        for line in failures:
            print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
