from __future__ import annotations

import pytest

from bramble.compute.arch import ARCH_PROFILES, UnknownArch, canonical_arch, get_profile

ALL = {"x86_64", "aarch64", "armv7", "riscv64", "mips", "mips64el", "ppc64le", "s390x"}


def test_every_issue_architecture_has_a_profile() -> None:
    assert set(ARCH_PROFILES) == ALL
    for profile in ARCH_PROFILES.values():
        assert profile.qemu_binary.startswith("qemu-system-")
        assert profile.console and profile.machine and profile.nic_model and profile.disk_bus
        assert profile.min_memory_mib >= 64


@pytest.mark.parametrize(
    ("alias", "name"),
    [("amd64", "x86_64"), ("ARM64", "aarch64"), ("armhf", "armv7"), ("ppc64el", "ppc64le"), ("mipsel", "mips")],
)
def test_debian_and_uname_spellings(alias: str, name: str) -> None:
    assert canonical_arch(alias) == name
    assert get_profile(alias).name == name


def test_unknown_arch_lists_the_known_ones() -> None:
    with pytest.raises(UnknownArch, match="unknown architecture 'vax'; known: aarch64, armv7"):
        canonical_arch("vax")
