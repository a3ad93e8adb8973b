from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bramble.scheduler.placement import NodeCapacity, NoPlacement, PlacementRequest, place


def node(name: str, **kw: object) -> NodeCapacity:
    values: dict = {"arch": "x86_64", "accel": "tcg", "cpus": 4, "memory_mib": 8192}
    values.update(kw)
    return NodeCapacity(name=name, **values)


def test_prefers_native_kvm_then_free_memory() -> None:
    req = PlacementRequest(arch="x86_64", cpus=1, memory_mib=512)
    nodes = [node("big-tcg", memory_mib=65536), node("kvm", accel="kvm"), node("small")]
    assert place(req, nodes) == "kvm"
    assert place(PlacementRequest(arch="aarch64", cpus=1, memory_mib=512), nodes) == "big-tcg"


def test_refuses_with_reasons() -> None:
    req = PlacementRequest(arch="x86_64", cpus=1, memory_mib=4096)
    with pytest.raises(NoPlacement, match="a: 1024 MiB free, 4096 MiB asked; b: down"):
        place(req, [node("a", memory_mib=2048, used_memory_mib=1024), node("b", up=False)])
    with pytest.raises(NoPlacement, match="no compute node"):
        place(req, [])


@given(
    used=st.integers(min_value=0, max_value=8192),
    asked=st.integers(min_value=1, max_value=8192),
    ratio=st.sampled_from([1.0, 1.5, 2.0]),
)
def test_never_overcommits_memory_beyond_ratio(used: int, asked: int, ratio: float) -> None:
    candidate = node("n", memory_mib=4096, used_memory_mib=used)
    req = PlacementRequest(arch="x86_64", cpus=1, memory_mib=asked)
    try:
        place(req, [candidate], memory_overcommit=ratio)
    except NoPlacement:
        assert used + asked > int(4096 * ratio)
    else:
        assert used + asked <= int(4096 * ratio)
