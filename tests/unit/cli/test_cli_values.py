"""Size and time parsing: what users type for --memory, --disk, --disk-size and --since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bramble.cli.client import CliError
from bramble.cli.output import GIB, KIB, MIB, TIB, format_size, parse_disk, parse_memory, parse_since

UNITS = {"K": KIB, "M": MIB, "G": GIB, "T": TIB}
SPELLINGS = [(f"{letter}{tail}", factor) for letter, factor in UNITS.items() for tail in ("", "B", "iB", "ib")]


@pytest.mark.parametrize(
    ("text", "mib"),
    [("512", 512), ("512M", 512), ("2G", 2048), ("1GiB", 1024), ("1.5G", 1536), ("2048k", 2), (" 4 gb ", 4096)],
)
def test_memory_examples(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize(("text", "gib"), [("20", 20), ("20G", 20), ("1T", 1024), ("2048M", 2), ("1TiB", 1024)])
def test_disk_examples(text: str, gib: int) -> None:
    assert parse_disk(text) == gib


@pytest.mark.parametrize("text", ["", "abc", "12X", "-1", "1.5.2G", "G", "0", "0G", "1536K", "1e3"])
def test_invalid_memory_is_one_readable_error(text: str) -> None:
    with pytest.raises(CliError) as info:
        parse_memory(text)
    assert "\n" not in str(info.value)
    assert "memory size" in str(info.value)


def test_disk_must_be_whole_gib() -> None:
    with pytest.raises(CliError, match="whole number of GiB"):
        parse_disk("512M")


@given(st.integers(min_value=1, max_value=4 * 1024 * 1024))
def test_memory_round_trips_through_format(mib: int) -> None:
    assert parse_memory(format_size(mib * MIB)) == mib
    assert parse_memory(str(mib)) == mib


@given(st.integers(min_value=1, max_value=65536))
def test_disk_round_trips_through_format(gib: int) -> None:
    assert parse_disk(format_size(gib * GIB)) == gib
    assert parse_disk(str(gib)) == gib


@given(st.integers(min_value=1, max_value=10**7), st.sampled_from(SPELLINGS))
def test_memory_with_any_unit_is_exact_or_refused(number: int, spelling: tuple[str, int]) -> None:
    suffix, factor = spelling
    total = number * factor
    if total % MIB == 0:
        assert parse_memory(f"{number}{suffix}") == total // MIB
    else:
        with pytest.raises(CliError):
            parse_memory(f"{number}{suffix}")


@given(st.integers(min_value=1, max_value=2**50))
def test_format_size_is_exact(n_bytes: int) -> None:
    text = format_size(n_bytes)
    number, unit = int(text.rstrip("BKMGTi")), text.lstrip("0123456789")
    assert number * {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": TIB}[unit] == n_bytes


NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("30s", timedelta(seconds=30)),
    ],
)
def test_relative_since(text: str, age: timedelta) -> None:
    assert datetime.fromisoformat(parse_since(text, now=NOW)) == NOW - age


def test_iso_since_keeps_its_offset_and_naive_means_local() -> None:
    assert datetime.fromisoformat(parse_since("2024-05-01T10:00:00Z")) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    naive = datetime(2024, 5, 1, 10, 0)
    assert datetime.fromisoformat(parse_since("2024-05-01T10:00")) == naive.astimezone()


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "5y", "2024-13-01"])
def test_invalid_since(text: str) -> None:
    with pytest.raises(CliError, match="invalid time"):
        parse_since(text)
