"""Security groups to per-tap policies. Pure: the agent (or core) calls it with what the database holds.

A NIC is in one or more groups; its policy is the union of their rules (allow-lists add up). A rule
whose remote is a group matches the addresses of that group's members, which become a named nft set,
so adding a VM to a group updates the set, not every rule. A project's ``default`` group lets in only
traffic from its own members and lets everything out, as in OpenStack.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from bramble.network.driver import NicSpec, Protocol, Rule, SecurityPolicy

__all__ = ["DEFAULT_GROUP", "GroupRule", "NicMembership", "SecurityGroup", "compile_policies", "default_group"]

DEFAULT_GROUP = "default"
Direction = Literal["ingress", "egress"]
_GROUP_ID = re.compile(r"^[A-Za-z0-9_-]{1,60}$")


@dataclass(frozen=True)
class GroupRule:
    """A rule as the user writes it; validated on construction (ValueError with a readable message)."""

    direction: Direction
    protocol: Protocol = "any"
    port_min: int | None = None
    port_max: int | None = None
    cidr: IPv4Network | None = None
    remote_group: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("ingress", "egress"):
            raise ValueError(f"direction {self.direction!r} is not ingress or egress")
        self.as_rule()  # protocol, ports, cidr xor group

    def as_rule(self) -> Rule:
        remote = _set_name(self.remote_group) if self.remote_group is not None else None
        return Rule(self.protocol, self.port_min, self.port_max, self.cidr, remote)


@dataclass(frozen=True)
class SecurityGroup:
    id: str
    name: str
    project: str
    rules: tuple[GroupRule, ...] = ()

    def __post_init__(self) -> None:
        if not _GROUP_ID.match(self.id):
            raise ValueError(f"group id {self.id!r} must be 1-60 of A-Z a-z 0-9 _ -")


@dataclass(frozen=True)
class NicMembership:
    nic: NicSpec
    groups: tuple[str, ...]


def _set_name(group_id: str) -> str:
    return group_id  # group ids are already safe set names (checked above); nft.py prefixes "g-"


def default_group(group_id: str, project: str) -> SecurityGroup:
    """Inbound only from members of the same group; all outbound."""
    return SecurityGroup(
        id=group_id,
        name=DEFAULT_GROUP,
        project=project,
        rules=(
            GroupRule("ingress", remote_group=group_id),
            GroupRule("egress", cidr=IPv4Network("0.0.0.0/0")),
        ),
    )


def compile_policies(
    memberships: Sequence[NicMembership],
    groups: Mapping[str, SecurityGroup],
    members: Mapping[str, Collection[IPv4Address]] | None = None,
) -> tuple[list[SecurityPolicy], dict[str, frozenset[IPv4Address]]]:
    """Per-tap policies and the address sets they use, ready for ``NetworkDriver.apply_security``.

    ``members`` maps a group to every address in it cloud-wide (VMs on other nodes count as remote
    group members too); when omitted it is computed from ``memberships`` (this node only).
    """
    if members is None:
        computed: dict[str, set[IPv4Address]] = {}
        for membership in memberships:
            for group_id in membership.groups:
                computed.setdefault(group_id, set()).add(membership.nic.ip)
        members = computed
    policies: list[SecurityPolicy] = []
    used_sets: set[str] = set()
    for membership in memberships:
        ingress: list[Rule] = []
        egress: list[Rule] = []
        for group_id in membership.groups:
            group = groups.get(group_id)
            if group is None:
                raise ValueError(f"NIC {membership.nic.nic_id} is in unknown security group {group_id!r}")
            for rule in group.rules:
                if rule.remote_group is not None:
                    if rule.remote_group not in groups:
                        raise ValueError(f"group {group_id!r} refers to unknown group {rule.remote_group!r}")
                    used_sets.add(rule.remote_group)
                target = ingress if rule.direction == "ingress" else egress
                compiled = rule.as_rule()
                if compiled not in target:
                    target.append(compiled)
        nic = membership.nic
        policies.append(SecurityPolicy(nic.tap, nic.bridge, nic.mac, nic.ip, tuple(ingress), tuple(egress)))
    sets = {name: frozenset(members.get(name, ())) for name in sorted(used_sets)}
    return policies, sets


def group_ids(memberships: Iterable[NicMembership]) -> set[str]:
    """Every group some NIC here is in: what the caller must load."""
    return {g for m in memberships for g in m.groups}
