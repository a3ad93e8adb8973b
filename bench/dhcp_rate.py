"""DHCP DORA rate with persistent leases: Bramble's brambled boot role against Kea and dnsmasq, side by side.

Two throwaway network namespaces joined by a veth pair (server 10.96.0.1/12, client 10.96.0.2/12;
nothing else is reachable). ISC perfdhcp (Debian kea-admin) runs in the client namespace and emulates a
relay (giaddr 10.96.0.2) for up to a million random client MACs, so nearly every exchange is a new
lease that each server must write to its lease file. The server kinds (``--servers``):

* ``bramble``: the product. The venv's ``brambled --config FILE`` with ``roles = ["boot"]``, a temp state
  dir and SQLite (the default database), one authoritative ``[[boot.interfaces]]`` entry for ``veth-s``
  (the range below, 3600 s leases). That is the whole boot role: the PXE boot chooser for network-booting
  clients, every ``DhcpEvent`` handed to the audit writer process (``bramble.auditd``, a child of the
  daemon), which turns it into a ``boot.dhcp`` audit event and writes it to the ``events`` table in
  batches, plus the role's TFTP/HTTP/syslog listeners (on 10069/10080/10514, in the namespace only) and
  IPv6 router advertisements. After perfdhcp stops, the point waits (up to 30 s) until the audit log has
  caught up and prints its ``boot.dhcp`` row count (about 1 per completed DORA: the role joins an OFFER
  with its REQUEST in one event; an OFFER left alone becomes its own row after a few seconds); the
  daemon's CPU, with its child processes', is counted until the last row landed, so audit writes that
  lag the packets are included;
* ``bramble-lib``: the library alone. ``bramble.boot.dhcp.DhcpServer`` with its lease journal in a small
  Python script (``SERVE_SCRIPT``) whose ``on_event`` only appends each ``DhcpEvent`` to a deque: no boot
  chooser, no audit log. It shows what the DHCP code costs by itself;
* ``kea``: ``kea-dhcp4``, memfile with ``persist: true`` (lease file compaction off), single-threaded,
  logging at WARN (the issue's anchor, tuned as in the netboot recipe);
* ``kea-log``: the same at Kea's default severity, INFO, to a file: one line per lease it hands out
  (``DHCP4_LEASE_ALLOC``) and per lease it offers. That is Kea's own record of every exchange, the
  nearest it comes to the audit row ``bramble`` writes per DORA;
* ``dnsmasq``: a lease file, ``no-ping``, ``quiet-dhcp``.

Each server is our own child process with its config in a temp dir, never a system service. For every
rate of the sweep each server gets a fresh process and an empty lease file (and database), then perfdhcp
offers that many DISCOVERs per second for ``--seconds``. A point has zero drops when every DISCOVER got
its OFFER and every REQUEST its ACK. The table prints each point and the highest zero-drop rate per
server; the summary compares ``bramble`` (the daemon) with Kea and dnsmasq (target: >= 1.00x Kea) and
prints ``bramble-lib``'s ratios on their own labelled line. The perfdhcp client shares the CPUs with the
server, and the host with other work: read small differences as noise.

    .venv/bin/python bench/dhcp_rate.py [--seconds 10] [--rates 1000,2000,4000,6000,8000,10000]
        [--servers bramble,bramble-lib,kea,dnsmasq] [--rounds 1]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, arg_parser, install_signal_cleanup, median, print_table  # bench/ is sys.path[0]

SERVER_IP, CLIENT_IP, PREFIX = "10.96.0.1", "10.96.0.2", 12
RANGE = ("10.97.0.0", "10.111.255.254")
SERVER_KINDS = ("bramble", "bramble-lib", "kea", "kea-log", "dnsmasq")
BOOT_PORTS = {"tftp": 10069, "http": 10080, "syslog": 10514}  # brambled's, inside the server namespace
SERVE_SCRIPT = r"""
import asyncio, collections, signal, sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from bramble.boot.dhcp import DhcpConfig, DhcpServer
from bramble.boot.leases import LeaseStore

async def main(interface, lease_file, server_ip, subnet, start, end):
    config = DhcpConfig(server_ip=IPv4Address(server_ip), subnet=IPv4Network(subnet),
                        range_start=IPv4Address(start), range_end=IPv4Address(end),
                        router=IPv4Address(server_ip), lease_seconds=3600)
    recent = collections.deque(maxlen=1000)  # every DhcpEvent is built and handed over, as in the boot role
    server = DhcpServer(config, LeaseStore(Path(lease_file), config.pool()), interface=interface,
                        on_event=recent.append)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.close()
    print(server.stats, flush=True)

asyncio.run(main(*sys.argv[1:7]))
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def veth_namespaces() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    server_ns, client_ns = f"bramble-dhb-s-{tag}", f"bramble-dhb-c-{tag}"
    made: list[str] = []
    try:
        for ns in (server_ns, client_ns):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", server_ns, "link", "add", "veth-s", "type", "veth", "peer", "name", "veth-c", "netns", client_ns)
        ip("-n", server_ns, "addr", "add", f"{SERVER_IP}/{PREFIX}", "dev", "veth-s")
        ip("-n", client_ns, "addr", "add", f"{CLIENT_IP}/{PREFIX}", "dev", "veth-c")
        ip("-n", server_ns, "link", "set", "veth-s", "up")
        ip("-n", client_ns, "link", "set", "veth-c", "up")
        yield server_ns, client_ns
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10, check=False)


class Server:
    """One server process in the server namespace, with its config and lease file in ``work``."""

    def __init__(
        self, name: str, ns: str, work: Path, profile: Path | None = None, wrapper: Sequence[str] = ()
    ) -> None:
        """``wrapper`` goes before the server's command line (e.g. valgrind, see dhcp_instructions.py)."""
        self.name, self.ns, self.work, self.profile, self.wrapper = name, ns, work, profile, list(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / "server.log"
        self.state_dir = work / "state"  # brambled's
        self.stdout_text = ""  # what bramble-lib printed after "ready" (its stats), read at stop

    def start(self) -> None:
        env = dict(os.environ)
        if self.name == "bramble":
            argv = [
                sys.executable,
                str(Path(sys.prefix) / "bin" / "brambled"),
                "--config",
                str(self._brambled_config()),
            ]
            if self.profile is not None:
                argv[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
        elif self.name == "bramble-lib":
            script = self.work / "serve.py"
            script.write_text(SERVE_SCRIPT)
            argv = [sys.executable, str(script), "veth-s", str(self.work / "leases.json"), SERVER_IP,
                    f"10.96.0.0/{PREFIX}", *RANGE]  # fmt: skip
            if self.profile is not None:
                argv[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
            env["PYTHONPATH"] = str(REPO / "src")
        elif self.name in ("kea", "kea-log"):
            config = {
                "Dhcp4": {
                    "interfaces-config": {"interfaces": ["veth-s"], "dhcp-socket-type": "raw"},
                    "lease-database": {
                        "type": "memfile",
                        "persist": True,
                        "name": str(self.work / "leases4.csv"),
                        "lfc-interval": 0,
                    },
                    "valid-lifetime": 3600,
                    "subnet4": [
                        {"id": 1, "subnet": f"10.96.0.0/{PREFIX}", "pools": [{"pool": f"{RANGE[0]} - {RANGE[1]}"}]}
                    ],
                    "loggers": [
                        {
                            "name": "kea-dhcp4",
                            "output_options": [{"output": str(self.log)}],
                            "severity": "WARN" if self.name == "kea" else "INFO",
                        }
                    ],
                }
            }
            (self.work / "kea.json").write_text(json.dumps(config))
            argv = ["kea-dhcp4", "-c", str(self.work / "kea.json")]
            env.update(KEA_PIDFILE_DIR=str(self.work), KEA_LOCKFILE_DIR=str(self.work))
        elif self.name == "dnsmasq":
            conf = self.work / "dnsmasq.conf"
            conf.write_text(
                "port=0\ninterface=veth-s\nbind-interfaces\n"
                f"dhcp-range={RANGE[0]},{RANGE[1]},255.240.0.0,1h\n"
                "dhcp-lease-max=2000000\ndhcp-authoritative\nno-ping\nquiet-dhcp\n"
                f"dhcp-leasefile={self.work / 'leases'}\nuser=root\ngroup=root\npid-file=\n"
            )
            argv = ["dnsmasq", "--keep-in-foreground", f"--log-facility={self.log}", f"--conf-file={conf}"]
        else:
            raise ValueError(f"unknown server kind {self.name!r} (one of {', '.join(SERVER_KINDS)})")
        daemon = self.name == "bramble"  # brambled logs to stderr and prints nothing else: both to its log
        with open(self.log if daemon else self.work / "stderr", "ab") as output:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self.wrapper, *argv],
                stdout=output if daemon else subprocess.PIPE,
                stderr=subprocess.STDOUT if daemon else output,
                env=env,
            )
        self._wait_ready()
        if self.name == "bramble" and not self.wrapper:
            self._check_pid_is_brambled()

    def _brambled_config(self) -> Path:
        """A boot-only node: no API, no agent; the boot role's TCP/UDP ports moved off the privileged
        ones (they are in the namespace only), DHCP on 67 as users run it."""
        config = self.work / "brambled.toml"
        config.write_text(
            f'state_dir = "{self.state_dir}"\nroles = ["boot"]\nlog_level = "info"\n'
            f"[boot]\ntftp_port = {BOOT_PORTS['tftp']}\nhttp_port = {BOOT_PORTS['http']}\n"
            f"syslog_port = {BOOT_PORTS['syslog']}\n"
            f'[[boot.interfaces]]\nname = "veth-s"\nmode = "authoritative"\nserver_ip = "{SERVER_IP}"\n'
            f'subnet = "10.96.0.0/{PREFIX}"\nrange_start = "{RANGE[0]}"\nrange_end = "{RANGE[1]}"\n'
            f'router = "{SERVER_IP}"\nlease_seconds = 3600\n'
        )
        return config

    def _check_pid_is_brambled(self) -> None:
        """``ip netns exec`` execs its command, so our child's PID must be brambled's python (the CPU
        figures read /proc of this PID); refuse to measure anything else."""
        assert self.proc is not None
        argv = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().split(b"\0")
        if not any(arg.endswith(b"/brambled") for arg in argv):
            raise RuntimeError(f"PID {self.proc.pid} is not brambled: {b' '.join(argv).decode(errors='replace')}")

    def log_tail(self, chars: int = 2000) -> str:
        path = self.log if self.name == "bramble" else self.work / "stderr"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        assert self.proc is not None
        if self.name == "bramble-lib":
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"bramble-lib did not start: {self.log_tail()}")
            return
        # (plain, under a wrapper such as valgrind): the daemon imports a lot and migrates its database
        limit = {"bramble": (60, 600)}.get(self.name, (10, 60))[bool(self.wrapper)]
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:  # listening on UDP 67 in the namespace
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-lun"], capture_output=True, text=True)
            listening = ":67 " in out.stdout or (self.name.startswith("kea") and self._kea_listening())
            if listening and (self.name != "bramble" or "boot role up" in self.log_tail(100_000)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} is not ready (port 67) after {limit} s: {self.log_tail()}")

    def _kea_listening(self) -> bool:
        """Kea (raw sockets) has opened its packet socket: the namespace's packet table has a row."""
        assert self.proc is not None
        try:
            return len(Path(f"/proc/{self.proc.pid}/net/packet").read_text().splitlines()) > 1
        except OSError:
            return False

    def cpu_seconds(self) -> tuple[float, float]:
        """(utime, stime) of the server, all its threads (``ip netns exec`` execs it, so the PID is the
        server's), plus its live child processes: brambled's audit writer (``bramble.auditd``), and the
        lease journal's compaction, which runs in a forked child of either Bramble server."""
        if self.proc is None:
            return 0.0, 0.0
        user, system, _ = _proc_cpu(self.proc.pid)
        child_user, child_system = self.children_cpu_seconds()
        return user + child_user, system + child_system

    def children_cpu_seconds(self) -> tuple[float, float]:
        """(utime, stime) of the server's live child processes."""
        if self.proc is None:
            return 0.0, 0.0
        user = system = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                child_user, child_system, parent = _proc_cpu(int(entry.name))
                if parent == self.proc.pid:
                    user, system = user + child_user, system + child_system
        return user, system

    def audit_rows(self) -> int | None:
        """``boot.dhcp`` rows in brambled's audit log (read-only; WAL lets us read while it writes)."""
        database = self.state_dir / "bramble.db"
        if not database.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
                (count,) = db.execute("SELECT count(*) FROM events WHERE action = 'boot.dhcp'").fetchone()
        except sqlite3.Error:
            return None
        return int(count)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.stdout_text = self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()


@dataclass
class Point:
    server: str
    rate: int
    sent_discover: int
    offers: int
    sent_request: int
    acks: int
    server_cpu: float = 0.0  # CPU seconds the server process used during the point
    server_sys: float = 0.0  # the part of it spent in the kernel (sockets, lease file writes)
    writer_cpu: float = 0.0  # the part of it the server's child processes used (included above)
    audit_rows: int | None = None  # brambled only: boot.dhcp rows in the events table once caught up
    audit_catchup: float = 0.0  # seconds after perfdhcp ended until the audit log stopped growing
    audit_note: str = ""  # e.g. the daemon said its audit log is behind (observations dropped)
    # Where the drops happened: datagrams the kernel dropped for a full socket buffer in each namespace
    # (the server's receive queue, perfdhcp's), and DISCOVERs a Bramble server shed (-1: not known).
    server_rcvbuf_errors: int = 0
    client_rcvbuf_errors: int = 0
    shed: int = -1

    @property
    def zero_drop(self) -> bool:
        return self.sent_discover > 0 and self.offers == self.sent_discover and self.acks == self.sent_request

    @property
    def acks_per_second(self) -> float:
        return self.acks


def _proc_cpu(pid: int) -> tuple[float, float, int]:
    """(utime, stime, parent PID) of a process from /proc; zeros if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[1])


def udp_rcvbuf_errors(ns: str) -> int:
    """The namespace's ``Udp: RcvbufErrors`` (/proc/net/snmp is per network namespace)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return 0
    return int(dict(zip(rows[0], rows[1], strict=False)).get("RcvbufErrors", 0))


def shed_count(text: str) -> int:
    """DISCOVERs shed, from the stats a Bramble server prints (bramble-lib) or logs (brambled) as it stops."""
    found = re.findall(r"'shed': (\d+)|shed (\d+)", text)
    return sum(int(a or b) for a, b in found) if found else -1


def parse_perfdhcp(text: str, server: str, rate: int, seconds: float) -> Point:
    def section(name: str) -> tuple[int, int]:
        m = re.search(r"\*\*\*Statistics for: " + name + r"\*\*\*(.*?)(?:\*\*\*|\Z)", text, re.S)
        body = m.group(1) if m else ""
        sent = re.search(r"sent packets:\s*(\d+)", body)
        recv = re.search(r"received packets:\s*(\d+)", body)
        return (int(sent.group(1)) if sent else 0), (int(recv.group(1)) if recv else 0)

    sent_d, offers = section("DISCOVER-OFFER")
    sent_r, acks = section("REQUEST-ACK")
    return Point(server, rate, sent_d, offers, sent_r, acks)


def run_point(
    name: str, rate: int, seconds: int, namespaces: tuple[str, str], profile: Path | None = None
) -> tuple[Point, str]:
    server_ns, client_ns = namespaces
    with tempfile.TemporaryDirectory(prefix="bramble-bench-dhcp-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        server = Server(name, server_ns, work, profile_path(profile, name, rate))
        audit: tuple[int | None, float, float, float] = (None, 0.0, 0.0, 0.0)
        try:
            server.start()
            time.sleep(0.5)  # raw sockets and interface detection settle (Kea)
            errors0 = udp_rcvbuf_errors(server_ns), udp_rcvbuf_errors(client_ns)
            user0, sys0 = server.cpu_seconds()
            writer0 = sum(server.children_cpu_seconds())
            perf = subprocess.run(
                ["ip", "netns", "exec", client_ns, "perfdhcp", "-4", "-l", "veth-c", "-r", str(rate),
                 "-R", "1000000", "-p", str(seconds), "-W", "1000000"],
                capture_output=True, text=True, timeout=seconds + 60, check=False,
            )  # fmt: skip
            user1, sys1 = server.cpu_seconds()
            errors1 = udp_rcvbuf_errors(server_ns), udp_rcvbuf_errors(client_ns)
            if name == "bramble":
                audit = wait_for_audit(server)
                _, _, user1, sys1 = audit
            writer1 = sum(server.children_cpu_seconds())
        finally:
            server.stop()
        point = parse_perfdhcp(perf.stdout, name, rate, seconds)
        point.server_cpu, point.server_sys = user1 - user0 + sys1 - sys0, sys1 - sys0
        point.writer_cpu = writer1 - writer0
        point.server_rcvbuf_errors, point.client_rcvbuf_errors = errors1[0] - errors0[0], errors1[1] - errors0[1]
        if name.startswith("bramble"):
            point.shed = shed_count(server.log_tail(10**7) + server.stdout_text)
        if name == "bramble":
            point.audit_rows, point.audit_catchup = audit[0], audit[1]
            final = server.audit_rows()  # after the daemon's shutdown flush
            notes = []
            if final is not None and final != point.audit_rows:
                notes.append(f"{final} after shutdown")
            behind = re.findall(r"audit log is behind: (\d+)", server.log_tail(10**7))
            if behind:
                notes.append(f"audit log is behind: {behind[-1]}+ observations dropped")
            point.audit_note = ", ".join(notes)
        note = "" if point.sent_discover else (perf.stdout + perf.stderr)[-300:].replace("\n", " ")
        return point, note


def profile_path(profile: Path | None, name: str, rate: int) -> Path | None:
    """One cProfile file per Python server kind and rate, next to the path given."""
    if profile is None or name not in ("bramble", "bramble-lib"):
        return None
    return profile.with_name(f"{profile.stem}-{name}-{rate}{profile.suffix}")


def wait_for_audit(
    server: Server, deadline_seconds: float = 30.0, quiet_seconds: float = 5.0
) -> tuple[int | None, float, float, float]:
    """Wait until brambled's audit log stops growing or 30 s pass; (rows, seconds until the last growth,
    utime and stime then). Quiet for 5 s: longer than the role holds an OFFER for its REQUEST (up to
    4 s before it is written alone) plus the observation log's flush period (0.2 s)."""
    start = time.monotonic()
    rows = server.audit_rows()
    user, system = server.cpu_seconds()
    grew_at = start
    while time.monotonic() - start < deadline_seconds and time.monotonic() - grew_at < quiet_seconds:
        time.sleep(0.1)
        now_rows = server.audit_rows()
        if now_rows != rows:
            rows, grew_at = now_rows, time.monotonic()
            user, system = server.cpu_seconds()
    return rows, grew_at - start, user, system


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0], rounds=1)
    parser.add_argument("--seconds", type=int, default=10, help="perfdhcp run per point (default 10)")
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000,10000", help="DISCOVERs per second")
    parser.add_argument(
        "--servers", default=",".join(SERVER_KINDS), help=f"comma-separated, of {', '.join(SERVER_KINDS)}"
    )
    parser.add_argument(
        "--profile-bramble",
        type=Path,
        help="cProfile each bramble and bramble-lib point: PATH's stem gets -<kind>-<rate> added",
    )
    args = parser.parse_args()
    install_signal_cleanup()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("perfdhcp") is None:
        print("needs perfdhcp (Debian package kea-admin)", file=sys.stderr)
        return 2
    names = [n for n in args.servers.split(",") if n]
    unknown = sorted(set(names) - set(SERVER_KINDS))
    if unknown or not names:
        print(
            f"--servers: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(SERVER_KINDS)}", file=sys.stderr
        )
        return 2
    for name, binary in (("kea", "kea-dhcp4"), ("kea-log", "kea-dhcp4"), ("dnsmasq", "dnsmasq")):
        if name in names and shutil.which(binary) is None:
            print(f"note: {binary} not found; {name} skipped")
            names.remove(name)
    rates = [int(r) for r in args.rates.split(",")]
    print(
        f"DHCP DORA rate, perfdhcp relay emulation, {args.seconds} s per point, {args.rounds} round(s), "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, load {Path('/proc/loadavg').read_text().split()[0]}"
    )
    points: dict[tuple[str, int], list[Point]] = {}
    notes: list[str] = []
    with veth_namespaces() as namespaces:
        for rnd in range(args.rounds):
            for rate in rates:
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for name in order:
                    point, note = run_point(name, rate, args.seconds, namespaces, args.profile_bramble)
                    points.setdefault((name, rate), []).append(point)
                    if note:
                        notes.append(f"{name} @ {rate}/s: {note}")
                    print(point_line(point), flush=True)
    report(names, rates, points, args.seconds)
    for note in notes:
        print(f"note: {note}")
    return 0


def point_line(point: Point) -> str:
    line = (
        f"  {point.server:11s} {point.rate:6d}/s: DISCOVER {point.sent_discover} OFFER {point.offers} "
        f"REQUEST {point.sent_request} ACK {point.acks} server CPU {point.server_cpu:.2f} s "
        f"({point.server_sys:.2f} s kernel"
        + (f", {point.writer_cpu:.2f} s in child processes" if point.writer_cpu else "")
        + ")"
        + ("  zero drops" if point.zero_drop else "")
    )
    if not point.zero_drop:  # where they were lost
        shed = f", shed {point.shed}" if point.shed >= 0 else ""
        line += f"; socket overflows: server {point.server_rcvbuf_errors}, perfdhcp {point.client_rcvbuf_errors}{shed}"
    if point.server == "bramble":
        rows = "?" if point.audit_rows is None else str(point.audit_rows)
        per_dora = f" = {point.audit_rows / point.acks:.2f}/DORA" if point.audit_rows is not None and point.acks else ""
        line += f"; audit rows {rows}{per_dora}, caught up {point.audit_catchup:.1f} s after perfdhcp"
        if point.audit_note:
            line += f" ({point.audit_note})"
    return line


def report(names: list[str], rates: list[int], points: dict[tuple[str, int], list[Point]], seconds: int) -> None:
    rows = []
    best: dict[str, int] = {}
    cpu_per_dora_by: dict[tuple[str, int], float] = {}
    for rate in rates:
        for name in names:
            runs = points.get((name, rate), [])
            if not runs:
                continue
            drops_d = median([1 - p.offers / p.sent_discover if p.sent_discover else 1.0 for p in runs])
            drops_r = median([1 - p.acks / p.sent_request if p.sent_request else 1.0 for p in runs])
            acks = median([p.acks / seconds for p in runs])
            cpu_per_dora = median([1e6 * p.server_cpu / p.acks if p.acks else float("nan") for p in runs])
            cpu_per_dora_by[name, rate] = cpu_per_dora
            writer_per_dora = median([1e6 * p.writer_cpu / p.acks if p.acks else float("nan") for p in runs])
            zero = all(p.zero_drop for p in runs)
            if zero:
                best[name] = max(best.get(name, 0), rate)
            rows.append(
                [rate, name, f"{acks:.0f}", f"{100 * drops_d:.2f}%", f"{100 * drops_r:.2f}%", f"{cpu_per_dora:.0f}",
                 f"{writer_per_dora:.0f}" if name.startswith("bramble") else "", "yes" if zero else ""]
            )  # fmt: skip
    print_table(
        "Rate sweep (ACK/s = completed DORA per second; server CPU per completed DORA)",
        ["rate/s", "server", "ACK/s", "drop D-O", "drop R-A", "CPU us/DORA", "of it in children", "zero drops"],
        rows,
    )
    lowest = rates[0]
    ours = [n for n in ("bramble", "bramble-lib") if n in names]
    summary: list[list[object]] = []
    for name in names:
        cpu = cpu_per_dora_by.get((name, lowest), float("nan"))
        row: list[object] = [name, best.get(name, 0), f"{cpu:.0f}"]
        for mine in ours:
            row += [rate_ratio(best, mine, name), cpu_ratio(cpu_per_dora_by, mine, name, lowest)]
        summary.append(row)
    headers = ["server", "zero-drop rate/s", f"CPU us/DORA @{lowest}"]
    for mine in ours:
        headers += [f"{mine}/this rate", f"this/{mine} CPU"]
    print_table(
        f"Highest zero-drop rate and CPU per DORA at {lowest}/s (rate ratio above 1 and CPU ratio above 1: "
        "Bramble is faster / needs less CPU)",
        headers,
        summary,
    )
    labels = {"bramble": "bramble (brambled boot role, audit log on)", "bramble-lib": "bramble-lib (DhcpServer alone)"}
    for mine in ours:
        for anchor in ("kea", "kea-log", "dnsmasq"):
            if anchor in names:
                print(
                    f"{labels[mine]} vs {anchor}: zero-drop rate {rate_ratio(best, mine, anchor) or 'n/a'} "
                    f"(target >= 1.00x Kea), CPU per DORA {anchor}/{mine} "
                    f"{cpu_ratio(cpu_per_dora_by, mine, anchor, lowest) or 'n/a'} at {lowest}/s"
                )


def rate_ratio(best: dict[str, int], mine: str, anchor: str) -> str:
    """``mine``'s highest zero-drop rate as a multiple of ``anchor``'s ('' if either has none)."""
    if mine == anchor or not best.get(anchor) or mine not in best:
        return ""
    return f"{best[mine] / best[anchor]:.2f}x"


def cpu_ratio(cpu_by: dict[tuple[str, int], float], mine: str, anchor: str, rate: int) -> str:
    """``anchor``'s CPU per DORA over ``mine``'s (above 1: ours needs less)."""
    ours, theirs = cpu_by.get((mine, rate)), cpu_by.get((anchor, rate))
    if mine == anchor or not ours or theirs is None or ours != ours or theirs != theirs:
        return ""
    return f"{theirs / ours:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
