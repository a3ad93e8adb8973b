"""A throw-away network-boot test bed: a namespace with a bridge, a tap for a QEMU guest, and helpers.

Everything lives inside one fresh network namespace (plus, for proxy-DHCP, a second one joined to the
bridge by a veth), so no packet reaches the host's interfaces. Processes started here are tracked by PID
and stopped on exit; the namespaces are deleted even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.qemu_helpers import pid_alive, wait_for

IPXE_DIR = Path("/usr/lib/ipxe")
OVMF = Path("/usr/share/ovmf/OVMF.fd")
SERVER_IP = "10.99.0.1"
PREFIX = 24
SUBNET = "10.99.0.0/24"
OTHER_SERVER_IP = "10.99.0.2"  # the "existing" DHCP server in proxy-DHCP tests
GUEST_MARKER = "BRAMBLE-GUEST-UP"
FAILURE_MARKERS = ("No bootable device", "Kernel panic", "Nothing to boot", "PXE-E")


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class NetbootBed:
    """One namespace ``ns`` with bridge ``br0`` (SERVER_IP) and ``tap0`` for the guest."""

    ns: str
    workdir: Path
    other_ns: str | None = None
    bridge: str = "br0"
    tap: str = "tap0"
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _extra_ns: list[str] = field(default_factory=list)

    def exec_args(self, *cmd: str, ns: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", ns or self.ns, *cmd]

    def run(self, *cmd: str, ns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_args(*cmd, ns=ns), capture_output=True, text=True, timeout=timeout, check=False)

    def spawn(
        self, cmd: Sequence[str], log: Path, *, ns: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside the namespace; output goes to ``log``; stopped (by PID) on exit."""
        out = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                self.exec_args(*cmd, ns=ns),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        finally:
            out.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def add_other_server_ns(self) -> str:
        """A second namespace on the same bridge (veth), holding OTHER_SERVER_IP: the site's DHCP server."""
        other = f"{self.ns}-o"
        ip("netns", "add", other)
        self.other_ns = other
        ip("-n", other, "link", "set", "lo", "up")
        ip("-n", self.ns, "link", "add", "vo0", "type", "veth", "peer", "name", "vo1", "netns", other)
        ip("-n", self.ns, "link", "set", "vo0", "master", self.bridge)
        ip("-n", self.ns, "link", "set", "vo0", "up")
        ip("-n", other, "addr", "add", f"{OTHER_SERVER_IP}/{PREFIX}", "dev", "vo1")
        ip("-n", other, "link", "set", "vo1", "up")
        return other

    def add_client_ns(self, mac: str) -> str:
        """A namespace with one NIC (``eth0``, MAC ``mac``) on the bridge, for real DHCP clients."""
        client = f"{self.ns}-c"
        ip("netns", "add", client)
        self._extra_ns.append(client)
        ip("-n", client, "link", "set", "lo", "up")
        ip("-n", self.ns, "link", "add", "vc0", "type", "veth", "peer", "name", "eth0", "netns", client)
        ip("-n", self.ns, "link", "set", "vc0", "master", self.bridge)
        ip("-n", self.ns, "link", "set", "vc0", "up")
        ip("-n", client, "link", "set", "eth0", "address", mac)
        ip("-n", client, "link", "set", "eth0", "up")
        return client

    def qemu_args(self, firmware: str, serial_log: Path, *, mac: str = "52:54:00:99:00:10") -> list[str]:
        """QEMU (TCG) booting from the network on tap0.

        ``bios``: SeaBIOS with the NIC's iPXE ROM (Debian ipxe-qemu). ``uefi``: OVMF with an empty NIC
        ROM, so EDK2's own PXE client runs and really chainloads iPXE.
        """
        nic = f"virtio-net-pci,netdev=n0,mac={mac}"
        args = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{serial_log}",
            "-monitor",
            "none",
            "-netdev",
            f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-boot",
            "n",
        ]
        if firmware == "uefi":
            args += ["-bios", str(OVMF), "-device", nic + ",romfile="]
        elif firmware == "bios":
            args += ["-device", nic]
        else:
            raise ValueError(firmware)
        return args

    def boot_guest(self, firmware: str, serial_log: Path, **kw: str) -> subprocess.Popen[bytes]:
        return self.spawn(self.qemu_args(firmware, serial_log, **kw), serial_log.with_suffix(".qemu.log"))

    def wait_for_marker(
        self, proc: subprocess.Popen[bytes], serial_log: Path, timeout: float, marker: str = GUEST_MARKER
    ) -> float:
        """Seconds until ``marker`` shows on the serial console; fails early on a boot failure."""
        start = time.monotonic()

        def seen() -> bool:
            text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
            if marker in text:
                return True
            for bad in FAILURE_MARKERS:
                if bad in text:
                    raise AssertionError(f"guest boot failed ({bad!r}); console:\n{text[-3000:]}")
            if proc.poll() is not None:
                raise AssertionError(f"QEMU exited with {proc.returncode}; console:\n{text[-3000:]}")
            return False

        wait_for(seen, deadline=timeout, interval=0.05, what=f"{marker!r} on the guest console ({serial_log})")
        return time.monotonic() - start

    def close(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc, timeout=5)
        self._procs.clear()
        for ns in (*self._extra_ns, self.other_ns, self.ns):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=15)


@contextmanager
def netboot_bed(workdir: Path) -> Iterator[NetbootBed]:
    ns = f"bramble-nb-{secrets.token_hex(3)}"
    bed = NetbootBed(ns=ns, workdir=workdir)
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", bed.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("-n", ns, "addr", "add", f"{SERVER_IP}/{PREFIX}", "dev", bed.bridge)
        ip("-n", ns, "-6", "addr", "add", "fd99::1/64", "dev", bed.bridge, "nodad")
        ip("-n", ns, "tuntap", "add", bed.tap, "mode", "tap")
        ip("-n", ns, "link", "set", bed.tap, "master", bed.bridge)
        ip("-n", ns, "link", "set", bed.tap, "up")
        ip("-n", ns, "link", "set", bed.bridge, "up")
        yield bed
    finally:
        bed.close()


def boot_tree(root: Path, kernel: Path, initrd: Path) -> Path:
    """Kernel, initrd and the iPXE loaders in one world-readable directory."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    shutil.copyfile(kernel, root / "vmlinuz")
    shutil.copyfile(initrd, root / "initrd.gz")
    for loader in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        shutil.copyfile(IPXE_DIR / loader, root / loader)
    for f in root.iterdir():
        f.chmod(0o644)
    return root


def netboot_available() -> str | None:
    """Why the bed cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    for path in (IPXE_DIR / "undionly.kpxe", IPXE_DIR / "snponly.efi", OVMF):
        if not path.exists():
            return f"{path} missing (Debian packages ipxe, ovmf)"
    return None


__all__ = [
    "GUEST_MARKER",
    "OTHER_SERVER_IP",
    "SERVER_IP",
    "SUBNET",
    "NetbootBed",
    "boot_tree",
    "netboot_available",
    "netboot_bed",
    "pid_alive",
]


VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def _bin(name: str) -> str:
    local = VENV_BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@dataclass
class BootDaemon:
    """A real ``brambled`` with the ``api`` and ``boot`` roles, running inside the bed's namespace."""

    bed: NetbootBed
    proc: subprocess.Popen[bytes]
    state_dir: Path
    api_port: int
    log: Path

    @property
    def token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the ``bramble`` CLI inside the namespace against this daemon."""
        env = {
            **os.environ,
            "BRAMBLE_URL": f"http://127.0.0.1:{self.api_port}",
            "BRAMBLE_TOKEN": self.token,
        }
        return subprocess.run(
            self.bed.exec_args(_bin("bramble"), *args), capture_output=True, text=True, timeout=timeout, env=env
        )

    def healthy(self) -> bool:
        done = self.bed.run("curl", "-fsS", "-m", "2", f"http://127.0.0.1:{self.api_port}/v1/health", timeout=10)
        return done.returncode == 0

    def stop(self) -> None:
        self.bed.stop(self.proc, timeout=20)


def start_boot_daemon(
    bed: NetbootBed,
    state_dir: Path,
    *,
    files_dir: Path,
    inventory_dir: Path,
    mode: str = "authoritative",
    extra_toml: str = "",
    interface_toml: str = "",
    api_port: int = 8470,
    timeout: float = 60,
) -> BootDaemon:
    """Write a config for br0 and start brambled; returns once its API answers."""
    state_dir.mkdir(parents=True, exist_ok=True)
    interface = f'name = "br0"\nmode = "{mode}"\nserver_ip = "{SERVER_IP}"\n'
    if mode == "authoritative":
        interface += f'subnet = "{SUBNET}"\nrange_start = "10.99.0.100"\nrange_end = "10.99.0.199"\n'
    interface += interface_toml
    config = state_dir / "brambled.toml"
    config.write_text(
        f'state_dir = "{state_dir}"\nroles = ["api", "boot"]\n{extra_toml}\n'
        f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n'
        f'[compute]\ndriver = "fake"\n[storage]\ndriver = "fake"\n'
        f'[boot]\ninventory_dir = "{inventory_dir}"\nfiles_dir = "{files_dir}"\n'
        f"[[boot.interfaces]]\n{interface}"
    )
    log = state_dir / "brambled.log"
    proc = bed.spawn([_bin("brambled"), "--config", str(config)], log)
    daemon = BootDaemon(bed, proc, state_dir, api_port, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"brambled exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return daemon.healthy()

    wait_for(up, deadline=timeout, interval=0.2, what="brambled's API in the namespace")
    return daemon


def start_dnsmasq_anchor(bed: NetbootBed, root: Path, http_port: int = 8080) -> None:
    """The tuned dnsmasq of the netboot recipe (DHCP+TFTP, 175.176, no ping, RA) and python's
    http.server: the anchor Bramble's boot role is measured against. Both run inside ``bed``."""
    work = bed.workdir
    (root / "boot.ipxe").write_text(
        f"#!ipxe\nkernel http://{SERVER_IP}:{http_port}/vmlinuz console=ttyS0 quiet initrd=initrd.gz\n"
        f"initrd http://{SERVER_IP}:{http_port}/initrd.gz\nboot\n"
    )
    (root / "boot.ipxe").chmod(0o644)
    conf = work / "dnsmasq.conf"
    conf.write_text(
        "port=0\ninterface=br0\nbind-interfaces\n"
        "dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,10m\n"
        f"dhcp-leasefile={work}/dnsmasq.leases\nenable-tftp\ntftp-root={root}\n"
        "dhcp-userclass=set:ipxe,iPXE\n"
        "dhcp-match=set:efi64,option:client-arch,7\ndhcp-match=set:efi64,option:client-arch,9\n"
        "dhcp-boot=tag:ipxe,boot.ipxe\ndhcp-boot=tag:!ipxe,undionly.kpxe\n"
        "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi\n"
        "dhcp-option=tag:ipxe,encap:175,176,1b\nno-ping\n"
        "enable-ra\ndhcp-range=fd99::,ra-only,64\n"
    )
    bed.spawn(
        ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--log-facility=-"],
        work / "dnsmasq.log",
    )
    bed.spawn(
        ["python3", "-m", "http.server", "--bind", SERVER_IP, "--directory", str(root), str(http_port)],
        work / "http.log",
    )

    def listening() -> bool:
        done = bed.run("curl", "-fsS", "-m", "2", "-o", "/dev/null", f"http://{SERVER_IP}:{http_port}/boot.ipxe")
        return done.returncode == 0

    wait_for(listening, deadline=20, interval=0.1, what="the anchor's HTTP server")
