"""Security-group apply: 1,000 rules across 100 taps, loaded atomically, against ``nft -f`` of the same ruleset.

Runs inside a throwaway network namespace (this script re-executes itself under ``ip netns exec``; the
namespace is deleted afterwards, also on failure), so the host's firewall is never touched. The taps
need not exist for nftables (rules match interface names), so none are created.

Two rule sets A and B differ in every tap's ports, so every full apply really changes the kernel's state.
Each round times, alternating A and B:

* Bramble, full: ``security_ruleset`` (compiled cold: caches cleared, as after an agent restart) and
  ``SecurityFirewall.apply(full=True)``: one libnftables text batch swapping ``bridge bramble`` and
  ``inet bramble`` in one netlink transaction. This is the figure with the target (< 50 ms).
* anchor ``nft -f``: that same ruleset (the text Bramble sends) loaded by the ``nft`` binary;
* anchor ``libnftables text``: that text through ``Nftables.cmd`` in this process (no compile);
* anchor ``nft -f, a rule per rule``: the layout this replaced (a chain per tap and direction, one nft rule
  per user rule, a verdict map to the chains), written as nft text and loaded by the ``nft`` binary;
* Bramble, live changes with the compile caches warm (as in a running agent), each followed by the way
  back so that every round changes something: one tap's 10 rules change (ports and ranges), and one
  rule (tcp/22 from a group) is added to one tap. Both go as incremental batches of set elements.

Ratios > 1.00x mean Bramble is slower than the anchor. Wall times on a shared host swing with its load,
so the table also gives each row's CPU time (this process's, plus the ``nft`` child's for ``nft -f``).

    .venv/bin/python bench/secgroup_apply.py [--rounds 15] [--taps 100] [--rules-per-tap 10]
"""

from __future__ import annotations

import dataclasses
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from _common import REPO, arg_parser, install_signal_cleanup, median, print_table, ratio

if TYPE_CHECKING:
    from bramble.network.driver import SecurityPolicy

TARGET_MS = 50.0
Variant = tuple[list["SecurityPolicy"], dict[str, list[IPv4Address]]]


def build(taps: int, rules_per_tap: int, variant: int) -> Variant:
    from bramble.network.driver import Rule, SecurityPolicy

    groups = {f"grp{g}": [IPv4Address(f"10.{g}.{i // 250}.{i % 250 + 1}") for i in range(100)] for g in range(5)}
    policies: list[SecurityPolicy] = []
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


def rule_per_rule_text(policies: Sequence[SecurityPolicy], sets: dict[str, list[IPv4Address]]) -> str:
    """The previous layout as nft text: per tap two chains holding one rule per user rule, reached through
    verdict maps keyed by (bridge, address). Only the security-group table (no anti-spoofing)."""
    lines = ["add table inet bramble", "delete table inet bramble", "table inet bramble {"]
    for name, members in sorted(sets.items()):
        lines.append(f"  set g-{name} {{ type ipv4_addr; elements = {{ {', '.join(map(str, members))} }} }}")
    for p in policies:
        for prefix, rules, remote in (("in", p.ingress, "ip saddr"), ("eg", p.egress, "ip daddr")):
            lines.append(f"  chain {prefix}-{p.tap} {{")
            for rule in rules:
                match = []
                if rule.remote_set:
                    match.append(f"{remote} @g-{rule.remote_set}")
                elif rule.cidr is not None:
                    match.append(f"{remote} {rule.cidr}")
                if rule.port_min is not None:
                    high = rule.port_max or rule.port_min
                    ports = str(rule.port_min) if high == rule.port_min else f"{rule.port_min}-{high}"
                    match.append(f"{rule.protocol} dport {ports}")
                elif rule.protocol != "any":
                    match.append(f"meta l4proto {rule.protocol}")
                lines.append(f"    {' '.join(match)} return")
            lines += ["    drop", "  }"]
    for name, prefix in (("egress", "eg"), ("ingress", "in")):
        elems = ", ".join(f'"{p.bridge}" . {p.ip} : jump {prefix}-{p.tap}' for p in policies)
        lines.append(f"  map {name} {{ type ifname . ipv4_addr : verdict; elements = {{ {elems} }} }}")
    lines += [
        "  chain forward { type filter hook forward priority 0; policy accept;",
        "    ct state established,related accept",
        "    iifname . ip saddr vmap @egress",
        "    oifname . ip daddr vmap @ingress",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def inner(rounds: int, taps: int, rules_per_tap: int) -> None:
    import nftables

    from bramble.network.driver import Rule
    from bramble.network.nft import Nft, SecurityFirewall, clear_compile_cache, security_ruleset

    variants = [build(taps, rules_per_tap, v) for v in (0, 1)]
    firewall = SecurityFirewall(Nft())
    texts = [security_ruleset(*v).full_text(1) for v in variants]  # what Bramble sends, as a file
    old_texts = [rule_per_rule_text(*v) for v in variants]
    # live changes: tap 0 takes B's rules (10 rules change); tap 0 gains tcp/22 from a group (1 rule)
    base_policies, base_sets = variants[0]
    one_tap = [variants[1][0][0], *base_policies[1:]]
    first = base_policies[0]
    one_rule = [
        dataclasses.replace(first, ingress=(*first.ingress, Rule("tcp", 22, None, remote_set="grp1"))),
        *base_policies[1:],
    ]
    elements = sum(len(e) for e in security_ruleset(*variants[0]).elements.values())
    files: list[Path] = []
    tmp = Path(tempfile.mkdtemp(prefix="bramble-bench-nft-"))
    try:
        for n, text in enumerate([*texts, *old_texts]):
            path = tmp / f"ruleset-{n}.nft"
            path.write_text(text)
            files.append(path)
        text_ctx = nftables.Nftables()
        timings: dict[str, list[float]] = {
            "bramble, full (cold compile)": [],
            "nft -f (same ruleset)": [],
            "libnftables text (same ruleset)": [],
            "nft -f, a rule per rule": [],
            "bramble, 1 tap's 10 rules changed": [],
            "bramble, 1 rule added": [],
        }
        modes: dict[str, set[str]] = {name: set() for name in timings}
        cpu: dict[str, list[float]] = {name: [] for name in timings}

        def timed(name: str, action: Callable[[], object]) -> None:
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            result = action()
            timings[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
            if isinstance(result, str):
                modes[name].add(result)

        def nft_file(path: Path) -> None:
            subprocess.run(["nft", "-f", str(path)], check=True)

        def text_cmd(text: str) -> None:
            rc, _out, err = text_ctx.cmd(text)
            if rc != 0:
                raise RuntimeError(err)

        def bramble_full(variant: Variant) -> str:
            clear_compile_cache()
            return firewall.apply(security_ruleset(*variant), full=True)

        def live_change(policies: list[SecurityPolicy]) -> str:
            return firewall.apply(security_ruleset(policies, base_sets))

        for r in range(rounds):
            v = r % 2  # each anchor loads the other variant than the one before it, so the state changes
            timed("bramble, full (cold compile)", partial(bramble_full, variants[v]))
            timed("nft -f (same ruleset)", partial(nft_file, files[1 - v]))
            timed("libnftables text (same ruleset)", partial(text_cmd, texts[v]))
            timed("nft -f, a rule per rule", partial(nft_file, files[2 + (1 - v)]))
            # the live changes start from A, with Bramble's memory of it (a full apply)
            bramble_full(variants[0])
            for name, changed in (("bramble, 1 tap's 10 rules changed", one_tap), ("bramble, 1 rule added", one_rule)):
                timed(name, partial(live_change, changed))
                firewall.apply(security_ruleset(base_policies, base_sets))  # and back
    finally:
        for path in files:
            path.unlink(missing_ok=True)
        tmp.rmdir()
    subprocess.run(["nft", "delete", "table", "bridge", "bramble"], check=False)
    subprocess.run(["nft", "delete", "table", "inet", "bramble"], check=False)
    bramble = median(timings["bramble, full (cold compile)"])
    rows = [
        [
            name,
            len(values),
            1000 * median(values),
            1000 * min(values),
            1000 * max(values),
            1000 * median(cpu[name]),
            "/".join(sorted(modes[name])),
        ]
        for name, values in timings.items()
    ]
    print(
        f"{taps} taps x {rules_per_tap} rules = {taps * rules_per_tap} user rules; Bramble loads them as "
        f"{elements} set elements (anti-spoofing and group members included), {rounds} rounds"
    )
    headers = ["what", "n", "median", "min", "max", "cpu median", "path"]
    print_table("apply (ms; cpu = user+system time of this process and of nft)", headers, rows)
    print(
        f"\nBramble full median {1000 * bramble:.1f} ms vs target {TARGET_MS:.0f} ms: "
        + ("met" if 1000 * bramble < TARGET_MS else "MISSED")
    )
    for anchor in ("nft -f (same ruleset)", "libnftables text (same ruleset)", "nft -f, a rule per rule"):
        print(f"Bramble full / {anchor}: {ratio(bramble, median(timings[anchor]))}")
    for change in ("bramble, 1 tap's 10 rules changed", "bramble, 1 rule added"):
        print(f"{change} / Bramble full: {ratio(median(timings[change]), bramble)}")
    bramble_cpu = median(cpu["bramble, full (cold compile)"])
    for anchor in ("nft -f (same ruleset)", "nft -f, a rule per rule"):
        print(f"CPU time, Bramble full / {anchor}: {ratio(bramble_cpu, median(cpu[anchor]))}")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (``nft``): what a busy host inflates least."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
