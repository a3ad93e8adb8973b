"""Shared helpers for the benchmarks: a real brambled on loopback, raw QEMU, statistics, tables.

Everything a benchmark starts is stopped by PID (the daemon, the QEMU processes its
state directory names, the raw QEMU processes it spawned) and every temp dir is
removed, also on Ctrl-C or SIGTERM. Traffic goes to 127.0.0.1 only.

The benchmarks measure and print; they never assert on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
GUEST_CACHE = Path(os.environ.get("BRAMBLE_GUEST_CACHE", "/var/cache/bramble/guests"))
MARKER = b"BRAMBLE-GUEST-UP"
HOST = "127.0.0.1"
GUEST_CMDLINE = "quiet panic=-1"  # what the e2e tests give the test guest's image


# ---------------------------------------------------------------- process hygiene
def install_signal_cleanup() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so every ``finally`` (our cleanup) runs."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def qemu_pids_naming(needle: str | Path) -> list[int]:
    """PIDs of live qemu-system processes whose arguments contain ``needle`` (a dir of ours)."""
    key = str(needle).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        argv = cmdline(int(proc.name))
        is_qemu = bool(argv) and b"qemu-system" in os.path.basename(argv[0])
        if is_qemu and any(key in a for a in argv) and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def kill_pids(pids: Iterable[int], timeout: float = 20.0) -> None:
    """SIGKILL each PID and wait until all are gone (reaping our own children)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + timeout
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < end:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def temp_dir(prefix: str = "bramble-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        # QEMU processes naming this dir must be gone before the files are.
        kill_pids(qemu_pids_naming(path))
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_vnc_displays(count: int, start: int = 300, avoid: Sequence[range] = ()) -> int:
    """A first display d such that 5900+d .. 5900+d+count-1 are free on loopback (best effort)."""
    d = start
    while d + count < 10000:
        if not any(d < r.stop and r.start < d + count for r in avoid) and all(
            port_free(5900 + d + i) for i in range(count)
        ):
            return d
        d += count
    raise RuntimeError("no free VNC port range")


# ---------------------------------------------------------------- guests
def guest_dir(arch: str = "x86_64") -> Path:
    """The cached test guest (built once by scripts/build-guest.sh, a no-op when up to date)."""
    target = GUEST_CACHE / arch
    if not all((target / f).exists() for f in ("kernel", "initrd.gz", "disk.qcow2")):
        subprocess.run([str(REPO / "scripts" / "build-guest.sh"), arch, str(target)], check=True)
    return target


class MarkerWatch:
    """Poll serial log files until each shows the guest's boot marker.

    Reads only the new bytes of each file (plus a marker-sized overlap), so polling
    many files at 10 ms stays cheap; it is the same code for Bramble and raw QEMU.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.offsets = [0] * len(self.paths)
        self.tails = [b""] * len(self.paths)
        self.seen: list[float | None] = [None] * len(self.paths)

    def poll(self) -> bool:
        now = time.perf_counter()
        for i, path in enumerate(self.paths):
            if self.seen[i] is not None:
                continue
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[i])
                    data = f.read()
            except FileNotFoundError:
                continue
            if not data:
                continue
            self.offsets[i] += len(data)
            window = self.tails[i] + data
            if MARKER in window:
                self.seen[i] = now
            self.tails[i] = window[-len(MARKER) :]
        return all(s is not None for s in self.seen)

    def wait(self, deadline: float, interval: float = 0.01, alive: Callable[[], None] | None = None) -> list[float]:
        """Block until every file has the marker; return the perf_counter time each was seen."""
        end = time.monotonic() + deadline
        while not self.poll():
            if time.monotonic() > end:
                missing = [str(p) for p, s in zip(self.paths, self.seen, strict=True) if s is None]
                raise TimeoutError(f"no {MARKER.decode()} after {deadline:g} s in: {', '.join(missing[:5])}")
            if alive is not None:
                alive()
            time.sleep(interval)
        return [s for s in self.seen if s is not None]


def qemu_img_overlay(backing: Path, path: Path, size_bytes: int) -> None:
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(backing),
            "-u",
            str(path),
            str(size_bytes),
        ],
        check=True,
    )


# ---------------------------------------------------------------- the daemon
@dataclass
class BenchDaemon:
    """A brambled on a free loopback port with its own state dir under ``root``."""

    root: Path
    compute: str = "qemu"  # qemu | fake
    storage: str = "local"  # local | fake
    extra_compute: dict[str, Any] = field(default_factory=dict)
    extra_toml: str = ""
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "bramble.daemon"])
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.root / "brambled.log"

    def config_text(self) -> str:
        compute = {
            "driver": self.compute,
            "accel": "tcg",
            "stop_timeout_seconds": 10,
            **self.extra_compute,
        }
        lines = [
            f'state_dir = "{self.state_dir}"',
            'node_name = "bench-node"',
            "[api]",
            f'host = "{HOST}"',
            f"port = {self.port}",
            "[compute]",
            *(f"{k} = {_toml(v)}" for k, v in compute.items()),
            "[storage]",
            f'driver = "{self.storage}"',
        ]
        return "\n".join(lines) + "\n" + self.extra_toml

    def start(self, timeout: float = 60.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "brambled.toml"
        config.write_text(self.config_text())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"brambled exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"brambled did not answer /v1/health within {timeout:g} s")
            time.sleep(0.05)
        self.token = (self.state_dir / "admin.token").read_text().strip()

    def stop(self) -> None:
        """SIGTERM the daemon by PID (SIGKILL if it lingers), then kill the QEMUs it left running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # brambled's QEMUs are daemonized and outlive it by design; they all name the state dir.
        kill_pids(qemu_pids_naming(self.state_dir))

    def __enter__(self) -> BenchDaemon:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def async_client(self, timeout: float = 60.0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(), timeout=timeout, **kwargs)

    def console_log(self, vm_id: str) -> Path:
        return self.state_dir / "run" / vm_id / "console.log"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def check(response: httpx.Response, *codes: int) -> Any:
    if response.status_code not in codes:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json() if response.content else {}


def import_image(api: httpx.Client, name: str, parts: dict[str, bytes], arch: str = "x86_64", cmdline: str = "") -> str:
    """Register an image, upload its parts (disk, kernel, initrd) and activate it; returns its id."""
    body: dict[str, Any] = {"name": name, "arch": arch}
    if cmdline:
        body["cmdline"] = cmdline
    image_id = str(check(api.post("/v1/images", json=body), 201)["id"])
    for part, data in parts.items():
        check(api.put(f"/v1/images/{image_id}/data/{part}", content=data), 200)
    check(api.post(f"/v1/images/{image_id}/activate"), 200)
    return image_id


def import_guest(api: httpx.Client, name: str, guest: Path, arch: str = "x86_64") -> str:
    """The cached test guest, imported as the e2e tests do (cmdline "quiet panic=-1")."""
    parts = {
        p: (guest / f).read_bytes() for p, f in (("disk", "disk.qcow2"), ("kernel", "kernel"), ("initrd", "initrd.gz"))
    }
    return import_image(api, name, parts, arch, cmdline=GUEST_CMDLINE)


def wait_operation(api: httpx.Client, op_id: str, deadline: float = 180.0, interval: float = 0.05) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        op: dict[str, Any] = check(api.get(f"/v1/operations/{op_id}"), 200)
        if op["status"] in ("succeeded", "failed"):
            return op
        if time.monotonic() > end:
            raise TimeoutError(f"operation {op_id} still {op['status']} after {deadline:g} s")
        time.sleep(interval)


def require_succeeded(op: dict[str, Any]) -> dict[str, Any]:
    if op["status"] != "succeeded":
        raise RuntimeError(f"operation {op['action']} {op['target']} failed: {op.get('error')}")
    return op


# ---------------------------------------------------------------- /proc
def proc_status_kib(pid: int, key: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (its own threads, not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


# ---------------------------------------------------------------- statistics and output
def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100), as numpy's default."""
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def arg_parser(description: str, rounds: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"measured rounds (default {rounds})")
    return parser


def _cpu_times() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


class HostNoise:
    """What else loaded the host between start() and line(): CPU steal (this is a VM),
    busy share of all CPUs, the load average and QEMU processes that are not ours."""

    def __init__(self, ours: Path) -> None:
        self.ours = str(ours).encode()
        self.start()

    def start(self) -> None:
        self.t0 = _cpu_times()

    def steal(self) -> float:
        t1 = _cpu_times()
        delta = [b - a for a, b in zip(self.t0, t1, strict=False)]
        total = sum(delta[:8]) or 1
        return 100.0 * delta[7] / total if len(delta) > 7 else math.nan

    def line(self) -> str:
        steal = self.steal()
        load = Path("/proc/loadavg").read_text().split()[0]
        foreign = 0
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                argv = cmdline(int(proc.name))
                if argv and b"qemu-system" in os.path.basename(argv[0]) and not any(self.ours in a for a in argv):
                    foreign += 1
        return f"steal {steal:.0f}%, load {load}, {foreign} foreign qemu"


def host_line() -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False)
    version = qemu.stdout.splitlines()[0] if qemu.stdout else "qemu ?"
    return f"host: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, {version}"
