"""BridgeDriver on real kernel objects, all inside throwaway namespaces (see ``netns_lab.py``).

"VMs" are namespaces whose veth peers sit on the network's bridge under tap-like names (``bt-...``), so
real TCP between them crosses the bridge, br_netfilter and the driver's nftables rules exactly as a
guest's frames from a tap would; the tap itself is tested by opening it the way QEMU does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from tests.integration.network.netns_lab import Lab, lab

from bramble.network.driver import (
    FloatingIp,
    MetadataTarget,
    NetworkError,
    NetworkSpec,
    NicSpec,
    ObservedNetwork,
)
from bramble.network.nft import security_ruleset
from bramble.network.secgroups import GroupRule, NicMembership, SecurityGroup, compile_policies, default_group

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_PERSIST = 0x0002, 0x1000, 0x4000, 0x0800
TUNSETIFF = 0x400454CA
QEMU_TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR


@pytest.fixture
def net_lab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def _network(octet: int, **extra: object) -> NetworkSpec:
    return NetworkSpec(
        id=f"net-{secrets.token_hex(4)}",
        cidr=IPv4Network(f"10.77.{octet}.0/24"),
        gateway=IPv4Address(f"10.77.{octet}.1"),
        **extra,  # type: ignore[arg-type]
    )


def _link_index(net_lab: Lab, name: str) -> int:
    return int(net_lab.ns(net_lab.host, "cat", f"/sys/class/net/{name}/ifindex").stdout)


def test_bridge_and_tap_lifecycle_and_qemu_style_open(net_lab: Lab) -> None:
    spec = _network(10)
    nic = NicSpec(
        vm_id="vm-1",
        nic_id=f"nic-{secrets.token_hex(4)}",
        mac="02:b7:00:00:10:05",
        ip=IPv4Address("10.77.10.5"),
        bridge=spec.bridge,
    )
    net_lab.driver(
        ("ensure_network", (spec,)), ("ensure_network", (spec,)), ("ensure_tap", (nic,)), ("ensure_tap", (nic,))
    )
    assert "inet 10.77.10.1/24" in net_lab.ns(net_lab.host, "ip", "-4", "addr", "show", spec.bridge).stdout
    flags = int(net_lab.ns(net_lab.host, "cat", f"/sys/class/net/{nic.tap}/tun_flags").stdout, 16)
    assert flags == IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_PERSIST
    assert net_lab.ns(net_lab.host, "readlink", f"/sys/class/net/{nic.tap}/master").stdout.strip().endswith(spec.bridge)
    # QEMU opens the persistent tap by name (TUNSETIFF); the carrier comes up while it holds the fd
    opener = (
        "import fcntl,os,struct; fd=os.open('/dev/net/tun', os.O_RDWR); "
        f"fcntl.ioctl(fd, {TUNSETIFF}, struct.pack('16sH', {nic.tap!r}.encode(), {QEMU_TAP_FLAGS})); "
        f"print(open('/sys/class/net/{nic.tap}/carrier').read().strip())"
    )
    assert net_lab.ns(net_lab.host, "/usr/bin/python3", "-c", opener).stdout.strip() == "1"
    (observed,) = net_lab.driver(("observe", ()))
    assert observed == ObservedNetwork(bridges={spec.bridge}, taps={nic.tap: spec.bridge})
    net_lab.driver(
        ("remove_tap", (nic.tap,)),
        ("remove_tap", (nic.tap,)),
        ("remove_network", (spec.id,)),
        ("remove_network", (spec.id,)),
    )
    (observed,) = net_lab.driver(("observe", ()))
    assert observed == ObservedNetwork()


def test_ensure_tap_needs_its_bridge(net_lab: Lab) -> None:
    nic = NicSpec(
        vm_id="vm-1", nic_id="nic-x", mac="02:b7:00:00:00:01", ip=IPv4Address("10.77.11.5"), bridge="bb-missing"
    )
    with pytest.raises(NetworkError, match="bridge bb-missing does not exist"):
        net_lab.driver(("ensure_tap", (nic,)))


class _Vms:
    """Three guests on one network: a and b in group "web" (ssh from web), c in its project's default group."""

    def __init__(self, net_lab: Lab, octet: int) -> None:
        self.lab = net_lab
        self.spec = _network(octet)
        net_lab.driver(("ensure_network", (self.spec,)))
        self.ip: dict[str, str] = {}
        self.nics: dict[str, NicSpec] = {}
        self.ns: dict[str, str] = {}
        for n, name in enumerate("abc", start=10):
            nic = NicSpec(
                vm_id=f"vm-{name}",
                nic_id=f"nic-{name}-{net_lab.tag}",
                mac=f"02:b7:00:00:{octet:02x}:{n:02x}",
                ip=IPv4Address(f"10.77.{octet}.{n}"),
                bridge=self.spec.bridge,
            )
            self.ns[name] = net_lab.vm(name, nic.tap, str(nic.ip), 24, str(self.spec.gateway), nic.mac)
            net_lab.driver(("ensure_tap", (nic,)))
            self.nics[name], self.ip[name] = nic, str(nic.ip)
        for name in "abc":
            net_lab.peer_server(self.ns[name], "0.0.0.0", 22)

    def apply(self, web_rules: tuple[GroupRule, ...]) -> None:
        groups = {
            "web": SecurityGroup("web", "web", "p1", web_rules),
            "p1-default": default_group("p1-default", "p1"),
        }
        memberships = [
            NicMembership(self.nics["a"], ("web",)),
            NicMembership(self.nics["b"], ("web",)),
            NicMembership(self.nics["c"], ("p1-default",)),
        ]
        policies, sets = compile_policies(memberships, groups)
        self.lab.driver(("apply_security", (policies, sets)))

    def ssh(self, src: str, dst: str, source_ip: str | None = None) -> str | None:
        return self.lab.connect(self.ns[src], self.ip[dst], 22, source=source_ip)

    def indexes(self) -> list[int]:
        return [_link_index(self.lab, n) for n in (self.spec.bridge, *(nic.tap for nic in self.nics.values()))]


def _probe_packets(net_lab: Lab, namespace: str) -> int:
    listing = json.loads(net_lab.ns(namespace, "nft", "-j", "list", "table", "ip", "probe").stdout)
    rules = [o["rule"] for o in listing["nftables"] if "rule" in o]
    return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)


SSH_FROM_WEB = (
    GroupRule("ingress", "tcp", 22, remote_group="web"),
    GroupRule("egress", cidr=IPv4Network("0.0.0.0/0")),
)
EGRESS_ONLY = (GroupRule("egress", cidr=IPv4Network("0.0.0.0/0")),)


def test_security_groups_live_update_without_recreating_anything(net_lab: Lab) -> None:
    vms = _Vms(net_lab, 20)
    before = vms.indexes()
    vms.apply(SSH_FROM_WEB)
    assert vms.ssh("a", "b") == vms.ip["a"]  # same group, rule allows: the server saw a's own address
    assert vms.ssh("b", "a") == vms.ip["b"]
    assert vms.ssh("c", "b") is None  # c is not in web
    assert vms.ssh("a", "c") is None  # c's default group admits only its own members
    # c pretending to be a (a's address added on c's NIC): its SYNs never reach b. A counter in b's
    # namespace proves it, and counts a's real connection as the control.
    net_lab.ns(vms.ns["b"], "nft", "add table ip probe")
    net_lab.ns(vms.ns["b"], "nft", "add chain ip probe input { type filter hook input priority 0 ; }")
    net_lab.ns(vms.ns["b"], "nft", f"add rule ip probe input ip saddr {vms.ip['a']} tcp dport 22 counter")
    net_lab.ns(vms.ns["c"], "ip", "addr", "add", f"{vms.ip['a']}/32", "dev", "eth0")
    assert vms.ssh("c", "b", source_ip=vms.ip["a"]) is None
    assert _probe_packets(net_lab, vms.ns["b"]) == 0
    assert vms.ssh("a", "b") == vms.ip["a"]
    assert _probe_packets(net_lab, vms.ns["b"]) > 0

    vms.apply(EGRESS_ONLY)  # the ssh rule is removed from web
    assert vms.ssh("a", "b") is None
    assert vms.ssh("c", "b") is None

    vms.apply(SSH_FROM_WEB)  # and put back
    assert vms.ssh("a", "b") == vms.ip["a"]
    assert vms.indexes() == before  # nothing was recreated: same bridge and ports throughout


def test_removing_a_rule_cuts_the_open_connections_it_allowed(net_lab: Lab) -> None:
    """The firewall lets established connections pass; a removed rule must still end the ones it let in
    (conntrack entries deleted), while connections the new rules allow keep running."""
    vms = _Vms(net_lab, 21)
    from_c = (*SSH_FROM_WEB, GroupRule("ingress", "tcp", 2222, cidr=IPv4Network(f"{vms.ip['c']}/32")))
    net_lab.echo_server(vms.ns["b"], "0.0.0.0", 2200)
    net_lab.echo_server(vms.ns["b"], "0.0.0.0", 2222)
    ssh_range = (
        GroupRule("ingress", "tcp", 2200, 2299, remote_group="web"),
        *from_c[1:],
    )
    vms.apply(ssh_range)
    a_to_b = net_lab.held_connection(vms.ns["a"], vms.ip["b"], 2200)
    c_to_b = net_lab.held_connection(vms.ns["c"], vms.ip["b"], 2222)
    assert (a_to_b.greeting, c_to_b.greeting) == (vms.ip["a"], vms.ip["c"])
    assert a_to_b.ping() == c_to_b.ping() == "echo"

    vms.apply((*SSH_FROM_WEB, from_c[-1]))  # web's port range goes (22 and c's 2222 stay)
    assert a_to_b.ping() != "echo"  # cut: its next segment is not part of any tracked connection
    assert c_to_b.ping() == "echo"  # still allowed, untouched
    assert vms.ssh("a", "b") == vms.ip["a"]

    vms.apply(SSH_FROM_WEB)  # c's rule goes too
    assert c_to_b.ping() != "echo"
    assert net_lab.held_connection(vms.ns["c"], vms.ip["b"], 2222).greeting == ""  # and no new one


def test_incremental_updates_enforce_what_a_full_replace_does(net_lab: Lab) -> None:
    vms = _Vms(net_lab, 60)
    # c may reach tcp/22 by address (a cidr rule): same structure as SSH_FROM_WEB, other elements
    from_c = (*SSH_FROM_WEB, GroupRule("ingress", "tcp", 22, cidr=IPv4Network(f"{vms.ip['c']}/32")))

    def policies(rules: tuple[GroupRule, ...]) -> tuple[Any, Any]:
        groups = {"web": SecurityGroup("web", "web", "p1", rules), "p1-default": default_group("p1-default", "p1")}
        memberships = [
            NicMembership(vms.nics["a"], ("web",)),
            NicMembership(vms.nics["b"], ("web",)),
            NicMembership(vms.nics["c"], ("p1-default",)),
        ]
        return compile_policies(memberships, groups)

    def tables() -> str:
        listing = net_lab.driver(("nft_text", ("inet", "bramble")), ("nft_text", ("bridge", "bramble")))
        return re.sub(r"set generation \{[^}]*\}", "", "".join(listing))  # the generation differs, by design

    # full, then incremental to from_c: c gets in
    _, _, mode = net_lab.driver(
        ("apply_security", policies(SSH_FROM_WEB)), ("apply_security", policies(from_c)), ("firewall_mode", ())
    )
    assert mode == "delta"
    assert vms.ssh("c", "b") == vms.ip["c"]
    assert vms.ssh("a", "b") == vms.ip["a"]
    after_delta = tables()
    net_lab.driver(("apply_security", policies(from_c)))  # a fresh driver: the whole replace
    assert tables() == after_delta  # the kernel holds the same firewall either way

    # and back, incrementally: c is out again, a still in
    _, _, mode = net_lab.driver(
        ("apply_security", policies(from_c)), ("apply_security", policies(SSH_FROM_WEB)), ("firewall_mode", ())
    )
    assert mode == "delta"
    assert vms.ssh("c", "b") is None
    assert vms.ssh("a", "b") == vms.ip["a"]

    # someone deleted our table behind the driver's back: the incremental batch fails as a whole and
    # the driver replaces both tables instead (never a firewall with holes)
    *_, mode = net_lab.driver(
        ("apply_security", policies(SSH_FROM_WEB)),
        ("nft_apply_text", ("delete table inet bramble\n",)),
        ("apply_security", policies(from_c)),
        ("firewall_mode", ()),
    )
    assert mode == "full"
    assert vms.ssh("c", "b") == vms.ip["c"]
    assert vms.ssh("b", "c") is None  # c's default group still holds
    assert tables() == after_delta


def test_a_bad_batch_leaves_the_old_rules_in_force(net_lab: Lab) -> None:
    vms = _Vms(net_lab, 30)
    vms.apply(SSH_FROM_WEB)
    (before,) = net_lab.driver(("nft_list", ("inet", "bramble")))
    # the whole new rule set (which would block ssh) plus one command the kernel refuses
    policies, sets = compile_policies(
        [NicMembership(vms.nics[n], ("web",)) for n in "ab"], {"web": SecurityGroup("web", "web", "p1", EGRESS_ONLY)}
    )
    bad = "add rule inet bramble forward jump no-such-chain\n"
    with pytest.raises(NetworkError, match="nothing applied"):
        net_lab.driver(("nft_apply_text", (security_ruleset(policies, sets).full_text(1) + bad,)))
    (after,) = net_lab.driver(("nft_list", ("inet", "bramble")))
    assert after == before
    assert vms.ssh("a", "b") == vms.ip["a"]
    assert vms.ssh("c", "b") is None
    # invalid input is refused before the kernel sees anything
    twice = [policies[0], policies[0]]
    with pytest.raises(NetworkError, match="two policies for tap"):
        net_lab.driver(("apply_security", (twice, sets)))
    (after,) = net_lab.driver(("nft_list", ("inet", "bramble")))
    assert after == before


def test_unknown_tap_is_dropped_until_it_has_a_policy(net_lab: Lab) -> None:
    vms = _Vms(net_lab, 40)
    groups = {"web": SecurityGroup("web", "web", "p1", SSH_FROM_WEB)}
    policies, sets = compile_policies([NicMembership(vms.nics[n], ("web",)) for n in "ab"], groups)
    net_lab.driver(("apply_security", (policies, sets)))
    assert vms.ssh("a", "b") == vms.ip["a"]
    # c's port has no policy: even its own gateway cannot be reached (ping is IPv4 + ARP)
    ping = net_lab.ns(vms.ns["c"], "busybox", "ping", "-c", "1", "-W", "1", str(vms.spec.gateway), check=False)
    assert ping.returncode != 0
    ping = net_lab.ns(vms.ns["a"], "busybox", "ping", "-c", "1", "-W", "1", str(vms.spec.gateway), check=False)
    assert ping.returncode == 0, ping.stdout


def test_masquerade_metadata_and_floating_ip(net_lab: Lab, tmp_path: Path) -> None:
    uplink = f"up-{net_lab.tag}"
    outside = net_lab.outside(uplink, "198.51.100.1", "198.51.100.2", 24)
    spec = _network(50, nat=True, uplink=uplink, metadata=MetadataTarget(IPv4Address("10.77.50.1"), 8775))
    net_lab.driver(("ensure_network", (spec,)))
    nics = {}
    ns = {}
    for name, n in (("a", 10), ("b", 11)):
        nic = NicSpec(
            vm_id=f"vm-{name}",
            nic_id=f"nic-{name}-{net_lab.tag}",
            mac=f"02:b7:00:00:50:{n:02x}",
            ip=IPv4Address(f"10.77.50.{n}"),
            bridge=spec.bridge,
        )
        ns[name] = net_lab.vm(name, nic.tap, str(nic.ip), 24, "10.77.50.1", nic.mac)
        net_lab.driver(("ensure_tap", (nic,)))
        nics[name] = nic
    anywhere = IPv4Network("0.0.0.0/0")
    ssh_from_anywhere = SecurityGroup(
        "pub",
        "pub",
        "p1",
        (
            GroupRule("ingress", "tcp", 22, cidr=anywhere),
            GroupRule("ingress", "tcp", 2200, cidr=anywhere),
            *EGRESS_ONLY,
        ),
    )
    policies, sets = compile_policies(
        [NicMembership(nic, ("pub",)) for nic in nics.values()], {"pub": ssh_from_anywhere}
    )
    net_lab.driver(("apply_security", (policies, sets)))
    net_lab.peer_server(outside, "0.0.0.0", 8080)
    net_lab.peer_server(ns["b"], "0.0.0.0", 22)

    # masquerade: the outside sees the host's uplink address, and the rule is there to read
    assert net_lab.connect(ns["a"], "198.51.100.2", 8080) == "198.51.100.1"
    (nat,) = net_lab.driver(("nft_list", ("ip", "bramble_nat")))
    masquerades = [o["rule"] for o in nat if "rule" in o and any("masquerade" in e for e in o["rule"]["expr"])]
    assert [r["chain"] for r in masquerades] == [f"post-{spec.bridge}"]
    assert net_lab.ns(net_lab.host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"

    # metadata: 169.254.169.254:80 from a VM reaches the listener on the gateway
    (tmp_path / "meta").write_text("instance-id: vm-a\n")
    net_lab.serve(
        net_lab.host,
        "/usr/bin/python3",
        "-m",
        "http.server",
        "-b",
        "10.77.50.1",
        "-d",
        str(tmp_path),
        "8775",
        ready_port=8775,
    )
    fetch = (
        "import urllib.request; print(urllib.request.urlopen('http://169.254.169.254/meta', timeout=3).read().decode())"
    )
    assert net_lab.ns(ns["a"], "/usr/bin/python3", "-c", fetch).stdout.strip() == "instance-id: vm-a"

    # floating IP: the outside reaches b at 198.51.100.50, and b's own connections leave as .50
    fip = FloatingIp(IPv4Address("198.51.100.50"), nics["b"].ip, spec.bridge, uplink)
    net_lab.driver(("apply_floating_ips", ([fip],)), ("apply_floating_ips", ([fip],)))
    assert net_lab.connect(outside, "198.51.100.50", 22) == "198.51.100.2"
    assert net_lab.connect(ns["b"], "198.51.100.2", 8080) == "198.51.100.50"
    assert net_lab.connect(ns["a"], "198.51.100.2", 8080) == "198.51.100.1"  # a still masqueraded
    # connections through the floating IP, both ways, held open across its detach
    net_lab.echo_server(ns["b"], "0.0.0.0", 2200)
    net_lab.echo_server(outside, "0.0.0.0", 8081)
    inbound = net_lab.held_connection(outside, "198.51.100.50", 2200)
    outbound = net_lab.held_connection(ns["b"], "198.51.100.2", 8081)
    masqueraded = net_lab.held_connection(ns["a"], "198.51.100.2", 8081)
    assert (inbound.greeting, outbound.greeting, masqueraded.greeting) == (
        "198.51.100.2",
        "198.51.100.50",
        "198.51.100.1",
    )
    assert inbound.ping() == outbound.ping() == masqueraded.ping() == "echo"
    net_lab.driver(("apply_floating_ips", ([],)))
    assert "198.51.100.50" not in net_lab.ns(net_lab.host, "ip", "-4", "addr", "show", uplink).stdout
    assert net_lab.connect(outside, "198.51.100.50", 22) is None
    assert inbound.ping() != "echo"  # the translations went with the address
    assert outbound.ping() != "echo"
    assert masqueraded.ping() == "echo"  # a's masqueraded connection is not a floating IP's

    net_lab.driver(("remove_network", (spec.id,)))
    (nat,) = net_lab.driver(("nft_list", ("ip", "bramble_nat")))
    assert not [o for o in nat if "chain" in o and spec.bridge in o["chain"]["name"]]
