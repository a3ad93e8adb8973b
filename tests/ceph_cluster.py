"""A throwaway single-host Ceph cluster for tests and benchmarks.

One monitor and one memstore OSD, both bound to 127.0.0.1 on a random port, living
entirely in a temporary directory. No manager: pools, RADOS, librbd and QEMU work
without one, and it would cost ~300 MiB of RAM and seconds of start-up.

The daemons run in the foreground as children of this process, so we know their PIDs
without trusting pid files; ``stop()`` signals exactly those PIDs and removes the
directory, and a start that fails half-way stops what it had started.

Faults: ``freeze("mon.a")`` stops the monitor with SIGSTOP. An OSD is "frozen" by dropping
the TCP traffic to and from its ports on loopback (a table of our own in the host's nftables,
removed at thaw and at stop), not by SIGSTOP: a single OSD stopped and continued can keep a
placement group "laggy", its ops waiting for readable until the OSD restarts (ceph-container
issue 1682, ceph PR 71663). To clients both look the same: Ceph stops answering.

Also made: a pool initialised for RBD and a restricted client (``client.bramble``,
``profile rbd`` on that pool) with its own keyring, the way a real deployment would
give Bramble a key of its own instead of the admin one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CEPH_BINARIES = ("ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool")
START_DEADLINE = 90.0  # seconds, generous for a busy 2-core CI machine
STOP_DEADLINE = 15.0
PR_SET_PDEATHSIG = 1


class CephStartError(RuntimeError):
    """The cluster did not come up; the message carries the tail of the daemon logs."""


def missing_binaries() -> list[str]:
    """Ceph programs (or Python bindings) this module needs that are not installed."""
    missing = [name for name in CEPH_BINARIES if shutil.which(name) is None]
    for module in ("rados", "rbd"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"python3-{module}")
    return missing


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the mon binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """True for a live process; a zombie counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class CephCluster:
    """A running throwaway cluster. ``conf`` is usable by the admin as is (``[client] keyring``)."""

    directory: Path
    conf: Path
    admin_keyring: Path
    pool: str
    user: str  # the restricted client id Bramble uses ("bramble", i.e. client.bramble)
    user_keyring: Path
    mon_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # one object name per placement group of the pool: a thaw is over when every PG answers
    probe_objects: list[str] = field(default_factory=list)
    blocked_ports: tuple[int, ...] = ()

    # ------------------------------------------------------------------ start
    @classmethod
    def start(
        cls,
        *,
        pool: str = "rbd",
        user: str = "bramble",
        osd_bytes: int = 8 * 1024**3,
        deadline: float = START_DEADLINE,
        parent: str | None = None,
    ) -> CephCluster:
        """Start a cluster and return once ``pool`` accepts writes; raise CephStartError otherwise."""
        missing = missing_binaries()
        if missing:
            raise CephStartError(f"Ceph is not installed ({', '.join(missing)}); run make test-deps")
        directory = Path(tempfile.mkdtemp(prefix="brceph-", dir=parent))
        cluster = cls(
            directory=directory,
            conf=directory / "ceph.conf",
            admin_keyring=directory / "admin.keyring",
            pool=pool,
            user=user,
            user_keyring=directory / f"client.{user}.keyring",
            mon_port=_free_port(),
        )
        try:
            cluster._bootstrap(osd_bytes, time.monotonic() + deadline)
        except BaseException as exc:
            logs = cluster._log_tails()
            cluster.stop()
            if isinstance(exc, CephStartError | subprocess.CalledProcessError | OSError):
                raise CephStartError(f"{exc}\n{logs}") from exc
            raise
        return cluster

    def _write_conf(self, fsid: str, osd_bytes: int) -> None:
        d = self.directory
        self.conf.write_text(
            f"""[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{self.mon_port}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = {d}/run
crash_dir = {d}/crash
# one host, one copy
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_delete = true
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# no manager on purpose: do not warn about it
mon_mgr_mkfs_grace = 31536000
# map changes are committed every 0.1 s instead of 1 s
paxos_propose_interval = 0.1
mon_tick_interval = 1
# a client whose connection breaks retries quickly
mon_client_hunt_interval = 0.5

[mon]
mon_data = {d}/mon.$id
log_file = {d}/log/$name.log
mon_cluster_log_file = {d}/log/cluster.log

[osd]
osd_data = {d}/osd$id
log_file = {d}/log/$name.log
osd_objectstore = memstore
memstore_device_bytes = {osd_bytes}

[client]
keyring = {self.admin_keyring}
"""
        )

    def _run(self, *argv: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise CephStartError(f"{' '.join(argv[:3])} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def _spawn(self, name: str, *argv: str) -> None:
        out = open(self.directory / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.processes[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
        finally:
            out.close()

    def _bootstrap(self, osd_bytes: int, end: float) -> None:
        d = self.directory
        for sub in ("run", "log", "crash", "mon.a", "osd0"):
            (d / sub).mkdir()
        fsid = str(uuid.uuid4())
        self._write_conf(fsid, osd_bytes)
        mon_keyring = d / "mon.keyring"
        self._run(
            "ceph-authtool", str(self.admin_keyring), "--create-keyring", "--gen-key", "-n", "client.admin",
            "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
        )  # fmt: skip
        self._run(
            "ceph-authtool", str(mon_keyring), "--create-keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"
        )
        self._run("ceph-authtool", str(mon_keyring), "--import-keyring", str(self.admin_keyring))
        monmap = d / "monmap"
        self._run(
            "monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap)
        )
        conf = str(self.conf)
        self._run("ceph-mon", "-c", conf, "-i", "a", "--mkfs", "--monmap", str(monmap), "--keyring", str(mon_keyring))
        self._spawn("mon.a", "ceph-mon", "-f", "-c", conf, "-i", "a")

        import rados

        admin = rados.Rados(conffile=conf, name="client.admin")
        admin.conf_set("rados_mon_op_timeout", "20")
        admin.conf_set("rados_osd_op_timeout", "30")
        try:
            self._connect(admin, end)
            self._add_osd(admin, osd_bytes)
            self._wait_osd_up(admin, end)
            self._add_pool(admin, end)
            self._add_user(admin)
            self.probe_objects = self._one_object_per_pg(admin)
        finally:
            admin.shutdown()

    def _connect(self, admin: Any, end: float) -> None:
        while True:
            self._check_daemons()
            try:
                admin.connect(timeout=max(1, int(end - time.monotonic())))
                return
            except Exception as exc:
                if time.monotonic() > end:
                    raise CephStartError(f"the monitor did not answer: {exc}") from exc
                time.sleep(0.2)

    def _mon(self, admin: Any, command: dict[str, Any], inbuf: bytes = b"") -> bytes:
        ret, out, status = admin.mon_command(json.dumps(command), inbuf)
        if ret != 0:
            raise CephStartError(f"mon command {command['prefix']!r} failed ({ret}): {status}")
        return bytes(out)

    def _add_osd(self, admin: Any, osd_bytes: int) -> None:
        osd_uuid = str(uuid.uuid4())
        key = self._run("ceph-authtool", "--gen-print-key").strip()
        self._mon(admin, {"prefix": "osd new", "uuid": osd_uuid, "id": 0}, json.dumps({"cephx_secret": key}).encode())
        conf = str(self.conf)
        self._run("ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--key", key, "--osd-uuid", osd_uuid)
        (self.directory / "osd0" / "keyring").write_text(f"[osd.0]\n\tkey = {key}\n")
        self._spawn("osd.0", "ceph-osd", "-f", "-c", conf, "-i", "0")

    def _wait_osd_up(self, admin: Any, end: float) -> None:
        # a pool made before its OSD is up takes ~5 s longer to get its placement groups
        while True:
            self._check_daemons()
            status = json.loads(self._mon(admin, {"prefix": "osd stat", "format": "json"}))
            if status.get("num_up_osds") == 1:
                return
            if time.monotonic() > end:
                raise CephStartError("the OSD did not come up")
            time.sleep(0.05)

    def _add_pool(self, admin: Any, end: float) -> None:
        import rbd

        self._mon(admin, {"prefix": "osd pool create", "pool": self.pool, "pg_num": 8, "pgp_num": 8})
        # pool_init enables the rbd application and writes the pool's first object:
        # it returns once a placement group of the pool is active, i.e. the pool is writable
        while True:
            self._check_daemons()
            try:
                with admin.open_ioctx(self.pool) as ioctx:
                    rbd.RBD().pool_init(ioctx, True)
                return
            except Exception as exc:
                if time.monotonic() > end:
                    raise CephStartError(f"pool {self.pool!r} did not become writable: {exc}") from exc
                time.sleep(0.2)

    def _one_object_per_pg(self, admin: Any) -> list[str]:
        """Object names that map to each placement group of the pool (the mapping never changes here)."""
        pools = json.loads(self._mon(admin, {"prefix": "osd dump", "format": "json"}))["pools"]
        pg_num = next(pool["pg_num"] for pool in pools if pool["pool_name"] == self.pool)
        by_pg: dict[str, str] = {}
        for index in range(64 * pg_num):
            name = f"bramble-test-probe-{index}"
            command = {"prefix": "osd map", "pool": self.pool, "object": name, "format": "json"}
            by_pg.setdefault(json.loads(self._mon(admin, command))["pgid"], name)
            if len(by_pg) == pg_num:
                return sorted(by_pg.values())
        raise CephStartError(f"found objects for only {len(by_pg)} of {pg_num} placement groups")

    def _osd_ports(self) -> tuple[int, ...]:
        """Every port the OSDs listen on (public, cluster and heartbeat addresses)."""
        import rados

        admin = rados.Rados(conffile=str(self.conf), name="client.admin")
        admin.conf_set("rados_mon_op_timeout", "10")
        try:
            self._connect(admin, time.monotonic() + 30)
            osds = json.loads(self._mon(admin, {"prefix": "osd dump", "format": "json"}))["osds"]
        finally:
            admin.shutdown()
        ports = set()
        for osd in osds:
            for key in ("public_addrs", "cluster_addrs", "heartbeat_back_addrs", "heartbeat_front_addrs"):
                for addr in osd.get(key, {}).get("addrvec", []):
                    ports.add(int(addr["addr"].rsplit(":", 1)[1]))
        return tuple(sorted(ports))

    @property
    def _nft_table(self) -> str:
        return f"brambletest_ceph_{self.mon_port}"

    def _nft(self, command: str) -> None:
        import nftables

        nft = nftables.Nftables()
        rc, _, error = nft.cmd(command)
        if rc != 0:
            raise RuntimeError(f"nft {command!r} failed: {error.strip()}")

    def _block_osds(self) -> None:
        if self.blocked_ports:
            return
        ports = self._osd_ports()
        if not ports:
            raise RuntimeError("the OSD has no addresses in the OSD map")
        table, listed = self._nft_table, ", ".join(map(str, ports))
        self._nft(
            f"add table ip {table}\n"
            f"add chain ip {table} out {{ type filter hook output priority -10; policy accept; }}\n"
            f"add rule ip {table} out ip daddr 127.0.0.1 tcp dport {{ {listed} }} drop\n"
            f"add rule ip {table} out ip saddr 127.0.0.1 tcp sport {{ {listed} }} drop"
        )
        self.blocked_ports = ports

    def _unblock_osds(self) -> None:
        if self.blocked_ports:
            self._nft(f"delete table ip {self._nft_table}")
            self.blocked_ports = ()

    def _add_user(self, admin: Any) -> None:
        caps = ["mon", "profile rbd", "osd", f"profile rbd pool={self.pool}"]
        out = self._mon(admin, {"prefix": "auth get-or-create", "entity": f"client.{self.user}", "caps": caps})
        self.user_keyring.write_bytes(out)
        self.user_keyring.chmod(0o600)

    def _check_daemons(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise CephStartError(f"{name} exited with status {proc.returncode}")

    def _log_tails(self, lines: int = 15) -> str:
        tails = []
        log_dir = self.directory / "log"
        for path in sorted(log_dir.glob("*")) if log_dir.is_dir() else []:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)

    # ------------------------------------------------------------------ faults
    @property
    def daemon_pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes.items()}

    def freeze(self, *names: str) -> None:
        """Freeze daemons (default: all) until thaw(): the monitor by SIGSTOP, OSDs by dropping their traffic."""
        chosen = names or tuple(self.processes)
        if any(name.startswith("osd.") for name in chosen):
            self._block_osds()
        for name in chosen:
            proc = self.processes[name]
            if not name.startswith("osd.") and proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let every daemon run again (harmless if none is frozen), and wait until every PG serves I/O.

        A thawed cluster can take seconds to answer again on a busy host (TCP retransmits back off
        while traffic is dropped); the next test must not start against one still catching up.
        """
        for proc in self.processes.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        self._unblock_osds()
        self.wait_serving()

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Write and remove a probe object in every PG of the pool as the admin, retrying until ``timeout``."""
        import rados

        end = time.monotonic() + timeout
        admin = rados.Rados(conffile=str(self.conf), name="client.admin")
        admin.conf_set("rados_mon_op_timeout", "5")
        admin.conf_set("rados_osd_op_timeout", "5")
        try:
            self._connect(admin, end)
            pending = list(self.probe_objects or ["bramble-test-probe"])
            while True:
                try:
                    with admin.open_ioctx(self.pool) as ioctx:
                        while pending:
                            ioctx.write_full(pending[0], b"x")
                            ioctx.remove_object(pending[0])
                            pending.pop(0)
                    return
                except rados.Error as exc:
                    if time.monotonic() > end:
                        raise CephStartError(f"no I/O within {timeout:.0f} s of a thaw: {exc}") from exc
                    time.sleep(0.2)
        finally:
            admin.shutdown()

    @contextlib.contextmanager
    def frozen(self, *names: str) -> Iterator[None]:
        """``with cluster.frozen("osd.0"):`` the OSD does not answer inside the block."""
        self.freeze(*names)
        try:
            yield
        finally:
            self.thaw()

    def client_env(self) -> dict[str, str]:
        """Environment for the ceph/rbd command-line tools as the admin."""
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop our daemons (OSD first: an OSD without its mon waits 5 s), drop our nft table, remove the directory."""
        with contextlib.suppress(Exception):
            self._unblock_osds()
        order = sorted(self.processes, key=lambda name: 0 if name.startswith("osd") else 1)
        for group in ([n for n in order if n.startswith("osd")], [n for n in order if not n.startswith("osd")]):
            procs = [self.processes[n] for n in group]
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGCONT)  # a frozen daemon cannot act on SIGTERM
                        proc.terminate()
            end = time.monotonic() + STOP_DEADLINE
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_DEADLINE)
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def ceph_cluster(**kwargs: Any) -> Iterator[CephCluster]:
    """``with ceph_cluster() as cluster:`` a started cluster, stopped and removed afterwards."""
    cluster = CephCluster.start(**kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()
