"""Security-group apply: 1,000 rules across 100 taps, replaced atomically, against ``nft -f`` of the same ruleset.

Runs inside a throwaway network namespace (this script re-executes itself under ``ip netns exec``; the
namespace is deleted afterwards, also on failure), so the host's firewall is never touched. The taps
need not exist for nftables (rules match interface names), so none are created.

Each round alternates between two rule sets (A and B differ in every tap's ports) so that every apply
really changes the kernel's state, and times:

* Bramble: ``security_commands`` (compile to libnftables JSON) + ``Nft.apply`` (one ``json_cmd``, one
  netlink transaction swapping ``bridge bramble`` and ``inet bramble``);
* anchor ``nft -f``: the same ruleset as text (what ``nft list`` prints for it, with the same
  add/delete/add table swap), loaded by the ``nft`` binary, as a shell script would;
* anchor ``libnftables text``: that text through ``Nftables.cmd`` in this process (no process start).

Target: Bramble's median < 50 ms. Ratios > 1.00x mean Bramble is slower than the anchor.

    .venv/bin/python bench/secgroup_apply.py [--rounds 15] [--taps 100] [--rules-per-tap 10]
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from _common import REPO, arg_parser, install_signal_cleanup, median, print_table, ratio

TARGET_MS = 50.0


def build(taps: int, rules_per_tap: int, variant: int) -> tuple[list[object], dict[str, list[IPv4Address]]]:
    from bramble.network.driver import Rule, SecurityPolicy

    groups = {f"grp{g}": [IPv4Address(f"10.{g}.{i // 250}.{i % 250 + 1}") for i in range(100)] for g in range(5)}
    policies: list[object] = []
    for t in range(taps):
        ingress = []
        for r in range(rules_per_tap):
            port = 1000 + 10 * r + variant
            kind = r % 4
            if kind == 0:
                ingress.append(Rule("tcp", port, None, remote_set=f"grp{(t + r) % 5}"))
            elif kind == 1:
                ingress.append(Rule("tcp", port, port + 5, cidr=IPv4Network(f"192.168.{r}.0/24")))
            elif kind == 2:
                ingress.append(Rule("udp", port, None, cidr=IPv4Network(f"172.16.{t}.0/24")))
            else:
                ingress.append(Rule("icmp", remote_set=f"grp{r % 5}"))
        ip = IPv4Address(f"10.200.{t // 200}.{t % 200 + 2}")
        mac = f"02:b7:00:00:{t // 256:02x}:{t % 256:02x}"
        policies.append(SecurityPolicy(f"bt-bench{t:05d}", "bb-bench", mac, ip, tuple(ingress), (Rule(),)))
    return policies, groups


def nft_text(nft: object) -> str:
    """The applied tables as nft syntax, preceded by the same atomic table swap Bramble uses."""
    parts = []
    for family, table in (("bridge", "bramble"), ("inet", "bramble")):
        rc, out, err = nft.cmd(f"list table {family} {table}")  # type: ignore[attr-defined]
        if rc != 0:
            raise RuntimeError(err)
        parts.append(f"table {family} {table}\ndelete table {family} {table}\n{out}")
    return "\n".join(parts)


def inner(rounds: int, taps: int, rules_per_tap: int) -> None:
    import nftables

    from bramble.network.nft import Nft, clear_compile_cache, security_batch, security_commands

    variants = [build(taps, rules_per_tap, v) for v in (0, 1)]
    driver_nft = Nft()
    texts = []
    for policies, sets in variants:  # the equivalent text of each variant, as nft prints it
        driver_nft.apply_json(security_batch(policies, sets))  # type: ignore[arg-type]
        text_nft = nftables.Nftables()
        texts.append(nft_text(text_nft))
    kernel_rules = sum(1 for c in security_commands(*variants[0]) if "rule" in c.get("add", {}))  # type: ignore[arg-type]
    files = []
    tmp = Path(tempfile.mkdtemp(prefix="bramble-bench-nft-"))
    try:
        for n, text in enumerate(texts):
            path = tmp / f"ruleset-{n}.nft"
            path.write_text(text)
            files.append(path)
        text_ctx = nftables.Nftables()
        timings: dict[str, list[float]] = {
            "compile": [],
            "bramble": [],
            "nft -f": [],
            "libnftables text": [],
            "bramble, 1 tap changed": [],
        }
        for r in range(rounds):
            v = r % 2
            policies, sets = variants[v]
            clear_compile_cache()  # every tap compiled afresh, as after an agent restart
            t0 = time.perf_counter()
            batch = security_batch(policies, sets)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            driver_nft.apply_json(batch)
            t2 = time.perf_counter()
            timings["compile"].append(t1 - t0)
            timings["bramble"].append(t2 - t0)
            v = 1 - v  # the anchors change the state too
            t0 = time.perf_counter()
            subprocess.run(["nft", "-f", str(files[v])], check=True)
            timings["nft -f"].append(time.perf_counter() - t0)
            v = 1 - v
            t0 = time.perf_counter()
            rc, _out, err = text_ctx.cmd(texts[v])
            timings["libnftables text"].append(time.perf_counter() - t0)
            if rc != 0:
                raise RuntimeError(err)
            # a live update: one tap's rules change, the other 99 come from the compile cache
            policies, sets = variants[v]
            mixed = [variants[1 - v][0][0], *policies[1:]]
            security_batch(policies, sets)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            driver_nft.apply_json(security_batch(mixed, sets))  # type: ignore[arg-type]
            timings["bramble, 1 tap changed"].append(time.perf_counter() - t0)
    finally:
        for path in files:
            path.unlink(missing_ok=True)
        tmp.rmdir()
    bramble = median(timings["bramble"])
    rows = [
        [name, len(values), 1000 * median(values), 1000 * min(values), 1000 * max(values)]
        for name, values in timings.items()
    ]
    print(
        f"{taps} taps x {rules_per_tap} rules = {taps * rules_per_tap} user rules, "
        f"{kernel_rules} rules in the kernel, {rounds} rounds"
    )
    print_table("apply (ms)", ["what", "n", "median", "min", "max"], rows)
    print(
        f"\nBramble median {1000 * bramble:.1f} ms vs target {TARGET_MS:.0f} ms: "
        + ("met" if 1000 * bramble < TARGET_MS else "MISSED")
    )
    print(f"Bramble / nft -f: {ratio(bramble, median(timings['nft -f']))}")
    print(f"Bramble / libnftables text: {ratio(bramble, median(timings['libnftables text']))}")


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=15)
    parser.add_argument("--taps", type=int, default=100)
    parser.add_argument("--rules-per-tap", type=int, default=10)
    parser.add_argument("--inner", action="store_true", help=argparse_hidden())
    args = parser.parse_args()
    if args.inner:
        inner(args.rounds, args.taps, args.rules_per_tap)
        return
    install_signal_cleanup()
    namespace = f"bramble-bench-sg-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        argv = [sys.executable, __file__, "--inner", "--rounds", str(args.rounds), "--taps", str(args.taps)]
        argv += ["--rules-per-tap", str(args.rules_per_tap)]
        subprocess.run(["ip", "netns", "exec", namespace, *argv], check=True, env=env)
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
