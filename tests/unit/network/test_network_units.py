"""Pure parts of the network driver: names, specs, the VLAN plan, the nft compile, groups, the fake."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from bramble.network.bridge import LinkStep, bridge_mac, plan_network
from bramble.network.driver import (
    IFNAME_MAX,
    MetadataTarget,
    NetworkError,
    NetworkSpec,
    NicSpec,
    Rule,
    SecurityPolicy,
    bridge_name,
    tap_name,
)
from bramble.network.fake import FakeNetworkDriver
from bramble.network.nft import (
    SecurityRuleset,
    floating_commands,
    network_nat_commands,
    remove_network_nat_commands,
    security_ruleset,
)
from bramble.network.secgroups import GroupRule, NicMembership, SecurityGroup, compile_policies, default_group

UUID = "3f2b8c1e-9d4a-4b7e-8f00-1234567890ab"


def _spec(**extra: Any) -> NetworkSpec:
    return NetworkSpec(id=UUID, cidr=IPv4Network("10.5.0.0/24"), gateway=IPv4Address("10.5.0.1"), **extra)


def test_names_fit_ifnamsiz_and_read_like_the_id() -> None:
    assert bridge_name(UUID) == "bb-3f2b8c1e9d4a"
    assert tap_name(UUID) == "bt-3f2b8c1e9d4a"
    odd = tap_name("some nic id that is not a uuid at all")
    assert len(odd) == IFNAME_MAX and odd.startswith("bt-") and odd != tap_name("another")
    assert bridge_mac(UUID) == bridge_mac(UUID) and int(bridge_mac(UUID)[:2], 16) & 0b11 == 0b10


def test_vlan_leg_is_planned_on_the_uplink_and_enslaved_to_the_bridge() -> None:
    """These machines have no 802.1q: the plan is what we can test; the kernel call is a plain link add."""
    steps = plan_network(_spec(uplink="eth1", vlan=120))
    assert steps[0] == LinkStep(
        ifname="bb-3f2b8c1e9d4a",
        kind="bridge",
        attrs={"br_stp_state": 0, "br_forward_delay": 0},
        address="10.5.0.1/24",
        mac=bridge_mac(UUID),
    )
    assert steps[1] == LinkStep(
        ifname="bv-3f2b8c1e9d4a", kind="vlan", attrs={"vlan_id": 120}, master="bb-3f2b8c1e9d4a", link="eth1"
    )
    assert len(plan_network(_spec(uplink="eth1"))) == 1  # an uplink alone is only the NAT exit


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"vlan": 5}, "needs an uplink"),
        ({"uplink": "eth1", "vlan": 4095}, "outside 1-4094"),
        ({"uplink": "eth1; rm -rf"}, "not a valid interface name"),
        ({"gateway": IPv4Address("10.5.0.255")}, "not a host address"),
    ],
)
def test_bad_network_specs(extra: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"id": UUID, "cidr": IPv4Network("10.5.0.0/24"), "gateway": IPv4Address("10.5.0.1")}
    values.update(extra)
    with pytest.raises(ValueError, match=message):
        NetworkSpec(**values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "sctp"}, "not one of"),
        ({"protocol": "icmp", "port_min": 1}, "need protocol tcp or udp"),
        ({"protocol": "tcp", "port_min": 30, "port_max": 20}, "not within 1-65535 in order"),
        ({"protocol": "tcp", "port_max": 20}, "needs its first port"),
        ({"cidr": IPv4Network("10.0.0.0/8"), "remote_set": "g"}, "not both"),
        ({"remote_set": "a b"}, "must be 1-64"),
    ],
)
def test_bad_rules(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(**kwargs)


def _policy(n: int, bridge: str = "bb-x", **extra: Any) -> SecurityPolicy:
    return SecurityPolicy(f"bt-{n}", bridge, f"02:b7:00:00:00:{n:02x}", IPv4Address(f"10.5.0.{n}"), **extra)


def _chain(ruleset: SecurityRuleset, name: str) -> list[str]:
    """The rules of one chain of the compiled text."""
    body = ruleset.structure.split(f"  chain {name} {{\n", 1)[1].split("\n  }\n", 1)[0]
    return [line.strip() for line in body.splitlines()]


def _elements(ruleset: SecurityRuleset, name: str, family: str = "inet") -> frozenset[str]:
    return ruleset.elements[(family, "bramble", name)]


def test_rules_become_set_elements_under_a_few_lookups() -> None:
    ssh = Rule("tcp", 22, None, remote_set="web")
    web = Rule("tcp", 8000, 8080, cidr=IPv4Network("192.0.2.0/24"))
    icmp = Rule("icmp", cidr=IPv4Network("0.0.0.0/0"))  # anywhere is no cidr at all
    policies = [_policy(5, ingress=(ssh, web, icmp), egress=(Rule(),)), _policy(6, ingress=(ssh,))]
    ruleset = security_ruleset(policies, {"web": [IPv4Address("10.5.0.5")]})
    text = ruleset.full_text(7)
    # one transaction that swaps both tables whole
    assert text.startswith(
        "add table bridge bramble\ndelete table bridge bramble\nadd table inet bramble\ndelete table inet bramble\n"
    )
    assert "add element inet bramble generation { 7 }" in text and "add element bridge bramble generation { 7 }" in text
    assert _elements(ruleset, "vms0") == {"10.5.0.5", "10.5.0.6"}
    assert _elements(ruleset, "g-web") == {"10.5.0.5"}
    assert _elements(ruleset, "in0-g0-port") == {"10.5.0.5 . tcp . 22", "10.5.0.6 . tcp . 22"}
    assert _elements(ruleset, "in0-cidr-ports") == {"10.5.0.5 . 192.0.2.0/24 . tcp . 8000-8080"}
    assert _elements(ruleset, "in0-proto") == {"10.5.0.5 . icmp"}
    assert _elements(ruleset, "eg0-all") == {"10.5.0.5"}  # 6 has no egress rule: it may send nothing
    assert ("inet", "bramble", "in0-cidr-ports") in ruleset.interval_sets
    ingress = _chain(ruleset, "in-bb-x")
    assert ingress[0] == "ip daddr != @vms0 return" and ingress[-1] == "drop"
    assert "ip daddr . ip saddr . meta l4proto . th dport @in0-cidr-ports return" in ingress
    assert "ip saddr @g-web ip daddr . meta l4proto . th dport @in0-g0-port return" in ingress
    assert len(ingress) == 2 + 7 + 4  # the bridge's kinds, one remote group's kinds: not one rule per rule
    assert 'meta nfproto ipv4 iifname vmap { "bb-x" : jump eg-bb-x }' in _chain(ruleset, "forward")
    assert _elements(ruleset, "tap_mac", "bridge") == {'"bt-5" . 02:b7:00:00:00:05', '"bt-6" . 02:b7:00:00:00:06'}
    assert _elements(ruleset, "tap_ip", "bridge") == {'"bt-5" . 10.5.0.5', '"bt-6" . 10.5.0.6'}


def test_overlapping_intervals_of_one_tap_become_plain_rules() -> None:
    wide = Rule("tcp", 1000, 2000, cidr=IPv4Network("10.0.0.0/8"))
    inside = Rule("tcp", 1500, 1600, cidr=IPv4Network("10.1.0.0/16"))
    other_proto = Rule("udp", 1500, 1600, cidr=IPv4Network("10.1.0.0/16"))
    ruleset = security_ruleset([_policy(5, ingress=(wide, inside, other_proto)), _policy(6, ingress=(inside,))], {})
    assert _elements(ruleset, "in0-cidr-ports") == {
        "10.5.0.5 . 10.0.0.0/8 . tcp . 1000-2000",
        "10.5.0.5 . 10.1.0.0/16 . udp . 1500-1600",
        "10.5.0.6 . 10.1.0.0/16 . tcp . 1500-1600",  # another tap: no overlap
    }
    assert "ip daddr 10.5.0.5 ip saddr 10.1.0.0/16 meta l4proto tcp th dport 1500-1600 return" in _chain(
        ruleset, "in-bb-x"
    )


def test_a_change_is_a_batch_of_element_changes() -> None:
    ssh = Rule("tcp", 22, None, remote_set="web")
    cidr = Rule("tcp", 80, 90, cidr=IPv4Network("192.0.2.0/24"))
    before = security_ruleset([_policy(5, ingress=(ssh, cidr)), _policy(6)], {"web": [IPv4Address("10.5.0.5")]})
    after = security_ruleset(
        [_policy(5, ingress=(ssh,)), _policy(6, ingress=(ssh,))], {"web": [IPv4Address("10.5.0.6")]}
    )
    delta = after.delta_text(before, 8, 7)
    assert delta is not None
    lines = delta.splitlines()
    assert lines[:2] == [
        "delete element bridge bramble generation { 7 }",
        "delete element inet bramble generation { 7 }",
    ]
    assert "delete element inet bramble g-web { 10.5.0.5 }" in lines
    assert "delete element inet bramble in0-cidr-ports { 10.5.0.5 . 192.0.2.0/24 . tcp . 80-90 }" in lines
    assert "add element inet bramble g-web { 10.5.0.6 }" in lines
    assert "add element inet bramble in0-g0-port { 10.5.0.6 . tcp . 22 }" in lines
    assert "add element inet bramble generation { 8 }" in lines
    assert max(i for i, line in enumerate(lines) if line.startswith("delete")) < min(
        i for i, line in enumerate(lines) if line.startswith("add")
    )  # deletions first: a new interval may overlap one that goes
    assert "table" not in delta.replace("bramble", "")  # no table, chain or rule is touched
    # new structure (a bridge, a remote group) or many interval removals: replace whole
    other_bridge = security_ruleset([_policy(5, ingress=(ssh,)), _policy(6, "bb-y")], {"web": []})
    assert other_bridge.delta_text(after, 9, 8) is None
    many = [Rule("tcp", 1000 + 10 * n, 1005 + 10 * n, cidr=IPv4Network("192.0.2.0/24")) for n in range(40)]
    wide = security_ruleset([_policy(5, ingress=(ssh, *many)), _policy(6, ingress=(ssh,))], {"web": []})
    narrow = security_ruleset([_policy(5, ingress=(ssh, cidr)), _policy(6, ingress=(ssh,))], {"web": []})
    assert narrow.delta_text(wide, 9, 8) is None
    assert wide.delta_text(narrow, 9, 8) is not None  # additions are cheap


def test_security_ruleset_refuses_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="two policies for tap bt-5"):
        security_ruleset([_policy(5), _policy(5)], {})
    clash = SecurityPolicy("bt-6", "bb-x", "02:b7:00:00:00:06", IPv4Address("10.5.0.5"))
    with pytest.raises(ValueError, match=r"two taps claim 10\.5\.0\.5 on bb-x"):
        security_ruleset([_policy(5), clash], {})
    with pytest.raises(ValueError, match="unknown address set 'nope'"):
        security_ruleset([_policy(5, ingress=(Rule(remote_set="nope"),))], {})
    with pytest.raises(ValueError, match="address set name"):
        security_ruleset([], {"bad name": []})
    security_ruleset([_policy(5), SecurityPolicy("bt-6", "bb-y", "02:b7:00:00:00:06", IPv4Address("10.5.0.5"))], {})


def test_nat_commands() -> None:
    spec = _spec(nat=True, uplink="eth0", metadata=MetadataTarget(IPv4Address("10.5.0.1"), 8775))
    commands = network_nat_commands(spec)
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    assert [r["chain"] for r in rules] == ["pre-bb-3f2b8c1e9d4a", "post-bb-3f2b8c1e9d4a"]
    assert rules[0]["expr"][-1] == {"dnat": {"addr": "10.5.0.1", "port": 8775}}
    assert rules[1]["expr"][-1] == {"masquerade": None}
    flushes = [c for c in commands if "flush" in c]
    assert len(flushes) == 2  # re-applying replaces the chains' contents, never appends
    assert [c for c in remove_network_nat_commands(spec.bridge) if "delete" in c]
    with pytest.raises(ValueError, match="mapped twice"):
        from bramble.network.driver import FloatingIp

        fip = FloatingIp(IPv4Address("192.0.2.9"), IPv4Address("10.5.0.5"), "bb-x")
        floating_commands([fip, fip])


def test_default_group_and_remote_group_members() -> None:
    groups = {
        "g1": default_group("g1", "p1"),
        "web": SecurityGroup("web", "web", "p1", (GroupRule("ingress", "tcp", 22, remote_group="g1"),)),
    }
    nic = lambda n: NicSpec(f"vm{n}", f"nic{n}", f"02:b7:00:00:00:{n:02x}", IPv4Address(f"10.5.0.{n}"), "bb-x")  # noqa: E731
    members = [NicMembership(nic(5), ("g1",)), NicMembership(nic(6), ("g1", "web"))]
    policies, sets = compile_policies(members, groups)
    assert sets == {"g1": frozenset({IPv4Address("10.5.0.5"), IPv4Address("10.5.0.6")})}
    assert policies[0].ingress == (Rule(remote_set="g1"),)
    assert policies[0].egress == (Rule(cidr=IPv4Network("0.0.0.0/0")),)
    assert policies[1].ingress == (Rule(remote_set="g1"), Rule("tcp", 22, None, remote_set="g1"))
    # cloud-wide members (VMs on other nodes) replace the local view
    _, sets = compile_policies(members, groups, {"g1": [IPv4Address("10.5.0.99")]})
    assert sets["g1"] == frozenset({IPv4Address("10.5.0.99")})
    with pytest.raises(ValueError, match="unknown security group 'x'"):
        compile_policies([NicMembership(nic(5), ("x",))], groups)
    with pytest.raises(ValueError, match="direction"):
        GroupRule("sideways")  # type: ignore[arg-type]


def test_fake_driver_follows_the_interface() -> None:
    fake = FakeNetworkDriver()
    spec = _spec()
    nic = NicSpec("vm1", "nic1", "02:b7:00:00:00:05", IPv4Address("10.5.0.5"), spec.bridge)
    with pytest.raises(NetworkError, match="ensure the network first"):
        fake.ensure_tap(nic)
    fake.ensure_network(spec)
    fake.ensure_tap(nic)
    assert fake.observe().taps == {nic.tap: spec.bridge}
    with pytest.raises(NetworkError, match="nothing applied"):
        fake.apply_security([_policy(5), _policy(5)], {})
    fake.remove_network(spec.id)
    assert fake.observe().bridges == set() and fake.observe().taps == {}
