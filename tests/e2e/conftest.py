"""A real brambled process with real QEMU (TCG), on a free loopback port and a temp state dir.

Every QEMU process a test's daemon started is killed by the PID in its runtime dir at the
end, and the daemon by its own PID: nothing is left running, nothing is matched by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.qemu_helpers import MARKER, pid_alive, qemu_pids, wait_for

__all__ = ["MARKER", "Daemon", "pid_alive", "qemu_pids", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_vnc_display() -> int:
    """A display whose port is free: other guests on this host (other test runs) may hold 5900 and up."""
    for _ in range(100):
        display = random.randint(100, 4000)
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 5900 + display)) != 0:
                return display
    raise AssertionError("no free VNC port found")


@dataclass
class Daemon:
    state_dir: Path
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.extra_env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bramble.daemon", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"brambled exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "brambled to answer /v1/health")
        self.token = (self.state_dir / "admin.token").read_text().strip()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, "BRAMBLE_URL": self.url, "BRAMBLE_TOKEN": self.token, "COLUMNS": "200"}


def kill_qemus(state_dir: Path) -> None:
    """Kill (by PID) every QEMU process this test's daemon started and wait until they are gone."""
    for pid in qemu_pids(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not qemu_pids(state_dir), 20, "QEMU processes to exit")


@contextlib.contextmanager
def running_daemon(tmp_path: Path, extra_config: str = "") -> Iterator[Daemon]:
    """brambled with TCG, a free API port and VNC displays away from other guests on the host;
    ``extra_config`` is appended to its TOML (e.g. a ``[storage]`` section). Stopped, with every
    QEMU it started, on exit."""
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    config = tmp_path / "brambled.toml"
    config.write_text(
        f'state_dir = "{state}"\nnode_name = "e2e-node"\n'
        f"[api]\nport = {port}\n"
        f'[compute]\naccel = "tcg"\nstop_timeout_seconds = 10\nvnc_first_display = {free_vnc_display()}\n'
        "[agent]\nreconcile_interval_seconds = 2\n" + extra_config
    )
    d = Daemon(state_dir=state, port=port, config=config, log=tmp_path / "brambled.log")
    try:
        d.start()
        yield d
    finally:
        d.stop()
        kill_qemus(state)


@pytest.fixture
def daemon(tmp_path: Path, guests: dict[str, Path]) -> Iterator[Daemon]:
    with running_daemon(tmp_path) as d:
        yield d


def import_guest(d: Daemon, name: str, guest: Path, arch: str) -> None:
    """Import a guest's disk, kernel and initrd through the API."""
    with d.client() as api:
        created = api.post("/v1/images", json={"name": name, "arch": arch, "cmdline": "quiet panic=-1"})
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        for part, filename in (("disk", "disk.qcow2"), ("kernel", "kernel"), ("initrd", "initrd.gz")):
            with open(guest / filename, "rb") as f:
                assert api.put(f"/v1/images/{image_id}/data/{part}", content=f.read()).status_code == 200
        activated = api.post(f"/v1/images/{image_id}/activate")
        assert activated.status_code == 200, activated.text


def wait_operation(api: httpx.Client, op_id: str, deadline: float = 120) -> dict:
    def finished() -> dict | None:
        op = api.get(f"/v1/operations/{op_id}").json()
        return op if op["status"] in ("succeeded", "failed") else None

    return wait_for(finished, deadline, f"operation {op_id}")  # type: ignore[no-any-return]


def wait_marker(api: httpx.Client, vm: str, deadline: float = 180, count: int = 1) -> str:
    def seen() -> str | None:
        text = api.get(f"/v1/vms/{vm}/console", params={"offset": 0}).json()["data"]
        return text if text.count(MARKER) >= count else None

    return wait_for(seen, deadline, f"{MARKER} x{count} on the console of {vm}", interval=0.2)  # type: ignore[no-any-return]
