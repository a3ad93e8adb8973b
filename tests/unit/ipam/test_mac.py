"""Bramble MACs: locally administered unicast, never one that is taken, clear errors for junk."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bramble.ipam import MacExhausted, is_bramble_mac, new_mac, normalise_mac


@given(st.integers(min_value=0, max_value=2**32))
def test_new_mac_is_unicast_locally_administered(seed: int) -> None:
    mac = new_mac(set(), random.Random(seed))
    first = int(mac[:2], 16)
    assert first & 0b01 == 0  # unicast
    assert first & 0b10 == 0b10  # locally administered
    assert is_bramble_mac(mac)
    assert normalise_mac(mac) == mac


def test_thousands_of_macs_are_unique_and_skip_taken_ones() -> None:
    rng = random.Random(7)
    taken: set[str] = set()
    for _ in range(1000):
        mac = new_mac(taken, rng)
        assert mac not in taken
        taken.add(mac)
    # the same seed replays the same draws: each of them is taken now, so the allocator must draw on
    with pytest.raises(MacExhausted):
        new_mac(taken, random.Random(7), attempts=5)
    upper = {m.upper().replace(":", "-") for m in taken}
    with pytest.raises(MacExhausted):
        new_mac(upper, random.Random(7), attempts=5)


@pytest.mark.parametrize("junk", ["", "52:54:00:12:34", "zz:54:00:12:34:56", "525400123456", "52:54:00:12:34:56:78"])
def test_junk_is_refused_with_the_input_named(junk: str) -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        normalise_mac(junk)
