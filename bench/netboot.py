"""Netboot: QEMU power-on to the guest's marker, Bramble's boot role vs a tuned dnsmasq, same guest, same run.

Each round builds a fresh namespace with a bridge and a tap, starts one server set inside it, powers on a
QEMU guest (TCG, ``-boot n``) and times QEMU start -> ``BRAMBLE-GUEST-UP`` on the serial console.
Rounds alternate between the anchor and Bramble so machine load hits both alike.

- anchor: dnsmasq (DHCP + TFTP, tuned as in the netboot recipe: no-ping, 175.176, IPv6 RA) with
  python's http.server for the kernel and initrd;
- bramble: brambled with the api and boot roles, the machine and a kernel profile registered with the CLI.

Modes: ``bios-http`` (SeaBIOS + the NIC's iPXE ROM -> script -> HTTP), ``uefi-http`` (OVMF's own PXE ->
snponly.efi by TFTP -> script -> HTTP). Target: ratio <= 1.0.

    .venv/bin/python bench/netboot.py --rounds 5 --modes bios-http,uefi-http
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.netboot_bed import (  # noqa: E402 - the repo root goes on sys.path first
    boot_tree,
    netboot_available,
    netboot_bed,
    start_boot_daemon,
    start_dnsmasq_anchor,
)
from tests.qemu_helpers import build_guests  # noqa: E402

MAC = "52:54:00:99:00:10"


def one_round(server: str, mode: str, guest: Path, timeout: float) -> float:
    firmware = mode.split("-")[0]
    with tempfile.TemporaryDirectory(prefix="bramble-netboot-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        files = boot_tree(work / "files", guest / "kernel", guest / "initrd.gz")
        with netboot_bed(work) as bed:
            if server == "dnsmasq":
                start_dnsmasq_anchor(bed, files)
            else:
                daemon = start_boot_daemon(bed, work / "state", files_dir=files, inventory_dir=work / "inventory")
                for args in (
                    ("profile", "add", "tiny", "--kernel", "vmlinuz", "--initrd", "initrd.gz", "--cmdline",
                     "console=ttyS0 quiet", "--transport", "http"),
                    ("machine", "add", "node1", "--mac", MAC, "--profile", "tiny"),
                ):  # fmt: skip
                    done = daemon.cli(*args)
                    if done.returncode != 0:
                        raise SystemExit(f"bramble {' '.join(args)} failed: {done.stderr}")
            serial = work / "serial.log"
            started = time.monotonic()
            guest_proc = bed.boot_guest(firmware, serial, mac=MAC)
            bed.wait_for_marker(guest_proc, serial, timeout)
            elapsed = time.monotonic() - started
            bed.stop(guest_proc)
            return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="bios-http,uefi-http")
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    why = netboot_available()
    if why:
        raise SystemExit(f"netboot bench cannot run: {why}")
    guest = build_guests()["x86_64"]
    modes = [m for m in args.modes.split(",") if m]
    results: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        for mode in modes:
            order = ("dnsmasq", "bramble") if round_no % 2 == 0 else ("bramble", "dnsmasq")
            for server in order:
                seconds = one_round(server, mode, guest, args.timeout)
                results.setdefault((mode, server), []).append(seconds)
                print(f"round {round_no + 1} {mode:10s} {server:8s} {seconds:6.2f} s", flush=True)
    print()
    print(f"{'mode':12s} {'dnsmasq s':>10s} {'bramble s':>10s} {'ratio':>7s}   (medians of {args.rounds} rounds)")
    for mode in modes:
        anchor = statistics.median(results[(mode, "dnsmasq")])
        ours = statistics.median(results[(mode, "bramble")])
        print(f"{mode:12s} {anchor:10.2f} {ours:10.2f} {ours / anchor:6.2f}x   target <= 1.00x")


if __name__ == "__main__":
    main()
