"""NICs on the QEMU command line: a tap netdev opened by name and the profile's NIC model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bramble.compute.arch import ARCH_PROFILES, ArchProfile
from bramble.compute.driver import NicAttachment, VmSpec
from bramble.compute.qemu.cmdline import RuntimePaths, build_argv

VM_ID = "6f1c2a3e-8d4b-4e5f-9a0b-1c2d3e4f5a6b"
PATHS = RuntimePaths.for_vm(Path("/run/bramble/vms"), VM_ID)


def nic(index: int, **overrides: object) -> NicAttachment:
    values: dict[str, object] = {
        "nic_id": f"nic-{index}",
        "network_id": "net-1",
        "tap": f"bt-00000000000{index}",
        "bridge": "bb-000000000001",
        "mac": f"02:b7:00:00:00:0{index}",
        "address": f"10.20.0.{index + 2}",
        "cidr": "10.20.0.0/24",
        "gateway": "10.20.0.1",
    }
    values.update(overrides)
    return NicAttachment(**values)  # type: ignore[arg-type]


def spec(profile: ArchProfile, nics: tuple[NicAttachment, ...]) -> VmSpec:
    return VmSpec(
        vm_id=VM_ID, name="web", arch=profile.name, cpus=1, memory_mib=max(256, profile.min_memory_mib), nics=nics
    )


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


@pytest.mark.parametrize("profile", list(ARCH_PROFILES.values()), ids=lambda p: p.name)
def test_each_nic_is_a_tap_netdev_with_the_profile_model(profile: ArchProfile) -> None:
    argv = build_argv(spec(profile, (nic(0), nic(1))), profile, PATHS, accel="tcg")
    assert option(argv, "-netdev") == [
        "tap,id=net0,ifname=bt-000000000000,script=no,downscript=no",
        "tap,id=net1,ifname=bt-000000000001,script=no,downscript=no",
    ]
    devices = [d for d in option(argv, "-device") if "netdev=" in d]
    assert devices == [
        f"{profile.nic_model},netdev=net0,mac=02:b7:00:00:00:00,id=net0-dev",
        f"{profile.nic_model},netdev=net1,mac=02:b7:00:00:00:01,id=net1-dev",
    ]
    assert "none" not in option(argv, "-nic")


def test_without_nics_the_guest_has_no_network() -> None:
    profile = ARCH_PROFILES["x86_64"]
    argv = build_argv(spec(profile, ()), profile, PATHS, accel="tcg")
    assert option(argv, "-nic") == ["none"] and option(argv, "-netdev") == []


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"mac": "02:B7:00:00:00:01"}, "MAC"),
        ({"mac": "02:b7:00:00:00:01,x=y"}, "MAC"),
        ({"tap": "bt-1,script=/x"}, "tap"),
    ],
)
def test_values_that_could_inject_options_are_refused(overrides: dict[str, object], words: str) -> None:
    profile = ARCH_PROFILES["x86_64"]
    with pytest.raises(ValueError, match=words):
        build_argv(spec(profile, (nic(0, **overrides),)), profile, PATHS, accel="tcg")
