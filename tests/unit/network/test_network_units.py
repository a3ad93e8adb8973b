"""Pure parts of the network driver: names, specs, the VLAN plan, the nft compile, groups, the fake."""

from __future__ import annotations

import json
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
    floating_commands,
    network_nat_commands,
    remove_network_nat_commands,
    security_batch,
    security_commands,
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


def _rules(commands: list[dict[str, Any]], chain: str) -> list[list[dict[str, Any]]]:
    return [
        c["add"]["rule"]["expr"] for c in commands if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain
    ]


def test_security_batch_swaps_both_tables_and_compiles_rules() -> None:
    ssh = Rule("tcp", 22, None, remote_set="web")
    web = Rule("tcp", 8000, 8080, cidr=IPv4Network("192.0.2.0/24"))
    commands = security_commands([_policy(5, ingress=(ssh, web), egress=(Rule(),))], {"web": [IPv4Address("10.5.0.5")]})
    heads = [json.dumps(c, sort_keys=True) for c in commands if "table" in next(iter(c.values()))]
    assert len(heads) == 6  # add/delete/add for bridge bramble and inet bramble: one swap each
    ingress = _rules(commands, "in-bt-5")
    assert {
        "match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@g-web"}
    } in ingress[0]
    assert {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
            "right": {"range": [8000, 8080]},
        }
    } in ingress[1]
    assert ingress[-1] == [{"drop": None}]
    assert _rules(commands, "eg-bt-5")[-2] == [{"return": None}]  # "any" egress: everything allowed
    tap_macs = [c["add"]["set"] for c in commands if c.get("add", {}).get("set", {}).get("name") == "tap_mac"]
    assert tap_macs[0]["elem"] == [{"concat": ["bt-5", "02:b7:00:00:00:05"]}]
    # the JSON text the driver sends is the same batch
    batch = security_batch([_policy(5, ingress=(ssh, web), egress=(Rule(),))], {"web": [IPv4Address("10.5.0.5")]})
    assert json.loads(batch) == json.loads(json.dumps({"nftables": commands}))


def test_security_batch_refuses_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="two policies for tap bt-5"):
        security_commands([_policy(5), _policy(5)], {})
    clash = SecurityPolicy("bt-6", "bb-x", "02:b7:00:00:00:06", IPv4Address("10.5.0.5"))
    with pytest.raises(ValueError, match=r"two taps claim 10\.5\.0\.5 on bb-x"):
        security_commands([_policy(5), clash], {})
    with pytest.raises(ValueError, match="unknown address set 'nope'"):
        security_commands([_policy(5, ingress=(Rule(remote_set="nope"),))], {})
    security_commands([_policy(5), SecurityPolicy("bt-6", "bb-y", "02:b7:00:00:00:06", IPv4Address("10.5.0.5"))], {})


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
