"""A throwaway lab of network namespaces: a "host" one where the driver runs, "VMs" and an "outside".

Every name carries a random tag so parallel runs never collide; everything lives inside namespaces the
lab created, and deleting them (always, in ``finally``) removes every veth, bridge, tap and nft table.
"""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.qemu_helpers import REPO, pid_alive, wait_for

HERE = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"bh6-h-{self.tag}"

    def add_ns(self, role: str) -> str:
        name = f"bh6-{role}-{self.tag}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def ns(self, name: str, *argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", name, *argv, check=check, timeout=timeout)

    def driver(self, *calls: tuple[str, tuple[Any, ...]]) -> list[Any]:
        """Run driver calls in the host namespace; raise the first error the driver raised."""
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
        done = subprocess.run(
            ["ip", "netns", "exec", self.host, sys.executable, str(HERE / "driver_runner.py")],
            input=pickle.dumps(list(calls)),
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"driver runner failed: {done.stderr.decode(errors='replace')[-2000:]}")
        results: list[tuple[str, Any]] = pickle.loads(done.stdout)
        for status, value in results:
            if status == "error":
                raise value
        return [value for _, value in results]

    def vm(self, role: str, port: str, ip: str, prefix: int, gateway: str, mac: str) -> str:
        """A namespace standing in for a guest: its ``eth0`` is a veth whose peer ``port`` sits in the host
        namespace, named like a tap so the driver attaches and filters it like one."""
        name = self.add_ns(role)
        run("ip", "-n", self.host, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "-n", name, "link", "set", "eth0", "address", mac)
        run("ip", "-n", name, "addr", "add", f"{ip}/{prefix}", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        run("ip", "-n", name, "route", "add", "default", "via", gateway)
        return name

    def outside(self, uplink: str, host_ip: str, outside_ip: str, prefix: int) -> str:
        """An "internet" namespace on a veth whose host end ``uplink`` is the host's uplink."""
        name = self.add_ns("o")
        run("ip", "-n", self.host, "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "-n", self.host, "addr", "add", f"{host_ip}/{prefix}", "dev", uplink)
        run("ip", "-n", self.host, "link", "set", uplink, "up")
        run("ip", "-n", name, "addr", "add", f"{outside_ip}/{prefix}", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        return name

    def serve(self, namespace: str, *argv: str, ready_port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.processes.append(proc)

        def listening() -> bool:
            out = self.ns(namespace, "ss", "-Hltn", f"sport = :{ready_port}").stdout
            return bool(out.strip())

        wait_for(listening, 10, f"a listener on port {ready_port} in {namespace}")
        return proc

    def peer_server(self, namespace: str, bind: str, port: int) -> None:
        self.serve(namespace, SYSTEM_PYTHON, str(HERE / "peer_server.py"), bind, str(port), ready_port=port)

    def echo_server(self, namespace: str, bind: str, port: int) -> None:
        self.serve(namespace, SYSTEM_PYTHON, str(HERE / "peer_server.py"), bind, str(port), "echo", ready_port=port)

    def held_connection(self, namespace: str, ip: str, port: int) -> HeldConnection:
        """A TCP connection from ``namespace`` to an ``echo_server`` that stays open until the lab closes."""
        code = (
            "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); "
            "f=s.makefile('rb'); print(f.readline().decode().strip(), flush=True); s.settimeout(2)\n"
            "for line in sys.stdin:\n"
            "    try:\n"
            "        s.sendall(b'ping\\n'); print('echo' if f.readline() == b'ping\\n' else 'closed', flush=True)\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__, flush=True)\n"
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, SYSTEM_PYTHON, "-c", code, ip, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(proc)  # type: ignore[arg-type]  # stopped by PID with the others
        return HeldConnection(proc)

    def connect(self, namespace: str, ip: str, port: int, source: str | None = None) -> str | None:
        """The server's answer (the address it saw us as), or None if the connection failed."""
        bind = f"s.bind(({source!r}, 0)); " if source else ""
        code = (
            "import socket,sys; s=socket.socket(); s.settimeout(1.5); "
            f"{bind}s.connect(({ip!r}, {port})); sys.stdout.write(s.recv(64).decode())"
        )
        done = self.ns(namespace, SYSTEM_PYTHON, "-c", code, check=False)
        return done.stdout if done.returncode == 0 else None

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                # ip netns exec execs the command, so this PID is our server itself
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            assert not pid_alive(proc.pid)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        for name in reversed(self.namespaces):
            run("ip", "netns", "delete", name, check=False)


class HeldConnection:
    """The client end of a ``Lab.held_connection``: ``greeting`` is the address the server saw."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.greeting = proc.stdout.readline().strip()

    def ping(self) -> str:
        """ "echo" when a line went to the server and came back; else what stopped it ("TimeoutError",
        "ConnectionResetError", "closed")."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


@contextmanager
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        the_lab.add_ns("h")
        yield the_lab
    finally:
        the_lab.close()
