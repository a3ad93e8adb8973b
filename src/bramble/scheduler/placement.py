"""Choose a node for a VM. Pure: data in, decision out, no I/O.

Filters first (up, enough memory and vCPUs under the overcommit ratios), then weighs:
a node that runs the guest's architecture natively with KVM beats TCG emulation, and
among equals the one with the most free memory wins (spreads load like Nova's RAM weigher).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    arch: str
    accel: str  # kvm | tcg
    cpus: int
    memory_mib: int
    used_cpus: int = 0
    used_memory_mib: int = 0
    up: bool = True


@dataclass(frozen=True)
class PlacementRequest:
    arch: str
    cpus: int
    memory_mib: int


class NoPlacement(Exception):
    """No node fits; the message says why each was turned down."""


def place(
    request: PlacementRequest,
    nodes: list[NodeCapacity],
    *,
    cpu_overcommit: float = 16.0,
    memory_overcommit: float = 1.0,
) -> str:
    if not nodes:
        raise NoPlacement("no compute node has registered yet (is the agent role running?)")
    reasons: list[str] = []
    fitting: list[tuple[tuple[int, int], str]] = []
    for node in nodes:
        free_mem = int(node.memory_mib * memory_overcommit) - node.used_memory_mib
        free_cpus = int(node.cpus * cpu_overcommit) - node.used_cpus
        if not node.up:
            reasons.append(f"{node.name}: down")
        elif request.memory_mib > free_mem:
            reasons.append(f"{node.name}: {max(free_mem, 0)} MiB free, {request.memory_mib} MiB asked")
        elif request.cpus > free_cpus:
            reasons.append(f"{node.name}: {max(free_cpus, 0)} vCPUs free, {request.cpus} asked")
        else:
            native = node.arch == request.arch and node.accel == "kvm"
            fitting.append(((int(native), free_mem), node.name))
    if not fitting:
        raise NoPlacement("no node can take it: " + "; ".join(reasons))
    fitting.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return fitting[0][1]
