"""Path confinement and MAC parsing of the boot HTTP server, without sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bramble.boot import http
from bramble.boot.http import _Refused, normalise_mac, open_under


def resolve_under(root: Path, requested: str) -> tuple[Path, os.stat_result]:
    """``open_under``, reporting which file the descriptor holds (and closing it)."""
    fd, info = open_under(root, requested)
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")), info
    finally:
        os.close(fd)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
        ("52-54-00-AB-cd-EF", "52:54:00:ab:cd:ef"),
        ("52:54:00:12:34", None),
        ("52:54-00:12:34:56", None),
        ("525400123456", None),
        ("52:54:00:12:34:5g", None),
        ("", None),
    ],
)
def test_normalise_mac(text: str, expected: str | None) -> None:
    assert normalise_mac(text) == expected


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"x")
    (tmp_path / "outside").write_bytes(b"secret")
    (root / "out").symlink_to(tmp_path / "outside")
    return root


def test_resolves_regular_files_inside(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    target, info = resolve_under(root, "d/f")
    assert target == (root / "d" / "f").resolve() and info.st_size == 1


@pytest.mark.parametrize(
    ("requested", "status"),
    [("../outside", 403), ("/etc/passwd", 403), ("d//f", 403), ("d/./f", 403), ("out", 403), ("d", 404), ("nope", 404)],
)
def test_refusals(tmp_path: Path, requested: str, status: int) -> None:
    root = _tree(tmp_path)
    with pytest.raises(_Refused) as refused:
        resolve_under(root, requested)
    assert refused.value.status == status and refused.value.message


@given(st.text(max_size=40))
def test_never_escapes_and_never_raises_anything_else(requested: str) -> None:
    root = Path(__file__).resolve().parent  # a real directory; nothing is written
    try:
        target, _ = resolve_under(root, requested)
    except _Refused as refused:
        assert 400 <= refused.status < 500
    else:
        assert target.is_relative_to(root)


@pytest.fixture
def swapped_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The tree changes between the check and the open: the open lands on a file outside the root."""
    outside = tmp_path / "outside"
    real_open = os.open
    monkeypatch.setattr(http.os, "open", lambda path, flags, *a: real_open(outside, flags, *a))
    yield outside


def test_a_file_swapped_in_after_the_check_is_refused_and_closed(tmp_path: Path, swapped_open: Path) -> None:
    root = _tree(tmp_path)
    before = _open_fds()
    with pytest.raises(_Refused) as refused:
        open_under(root, "d/f")
    assert refused.value.status == 403 and "outside the files root" in refused.value.message
    assert _open_fds() == before  # the descriptor of the outside file was closed


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    os.mkfifo(root / "pipe")
    with pytest.raises(_Refused) as refused:
        open_under(root, "pipe")
    assert refused.value.status == 404 and "not a file" in refused.value.message
