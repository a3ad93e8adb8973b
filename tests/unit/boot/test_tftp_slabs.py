"""The TFTP server's preassembled DATA packets: headers, payloads and the final block are exact.

These walk the server's private buffer layer over real files, so a layout bug shows up here
with a small example instead of as a corrupt download in the integration tests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bramble.boot.tftp import _block_number_bytes, _NetasciiSource, _OctetSource, _Slabs


@given(first=st.integers(1, 200_000), count=st.integers(1, 5000))
def test_block_number_bytes_wrap_at_65536(first: int, count: int) -> None:
    high, low = _block_number_bytes(first, count)
    assert [h << 8 | lo for h, lo in zip(high, low, strict=True)] == [(first + i) & 0xFFFF for i in range(count)]


def _walk(slabs: _Slabs) -> list[tuple[int, bytes]]:
    """(block number on the wire, payload) for every block, fetched the way a transfer does."""
    out = []
    block = 1
    while block <= slabs.last_block:  # a huge sentinel until the end of a netascii file is found
        packets, base = slabs.packets_from(block)
        packet = bytes(packets[block - base])
        view, offset, length = slabs.locate(block)
        assert bytes(view[offset : offset + 4 + length]) == packet
        assert packet[:2] == b"\x00\x03"
        out.append((int.from_bytes(packet[2:4], "big"), packet[4:]))
        block += 1
    return out


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=20_000),
    blksize=st.sampled_from([8, 13, 512, 1468, 4096]),
    windowsize=st.integers(1, 2000),
    netascii=st.booleans(),
)
def test_every_block_is_framed_and_the_file_reassembles(
    data: bytes, blksize: int, windowsize: int, netascii: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        source: _OctetSource | _NetasciiSource
        if netascii:
            source = _NetasciiSource(os.fdopen(fd, "rb", buffering=0), len(data))
            expected = data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        else:
            source = _OctetSource(fd, len(data), blksize)
            expected = data
        slabs = _Slabs(source, blksize, windowsize, None if netascii else len(data))
        try:
            blocks = _walk(slabs)
        finally:
            slabs.close()
    assert [number for number, _ in blocks] == [(i + 1) & 0xFFFF for i in range(len(blocks))]
    assert all(len(payload) == blksize for _, payload in blocks[:-1])
    assert len(blocks[-1][1]) < blksize  # a short (possibly empty) final block ends the transfer
    assert b"".join(payload for _, payload in blocks) == expected
    assert slabs.bytes_through(len(blocks)) == len(expected)


def test_block_numbers_wrap_inside_a_slab(tmp_path: Path) -> None:
    """At blksize 1468 a slab holds 89 blocks, so block 65536 falls inside one (sparse file)."""
    path = tmp_path / "sparse"
    blocks = 65536 + 100
    with path.open("wb") as fh:
        fh.truncate(blocks * 1468 - 5)
    size = path.stat().st_size
    slabs = _Slabs(_OctetSource(os.open(path, os.O_RDONLY), size, 1468), 1468, 1, size)
    try:
        assert 65536 % slabs.per_slab != 0
        numbers = []
        for block in range(65530, 65543):
            packets, base = slabs.packets_from(block)
            numbers.append(int.from_bytes(packets[block - base][2:4], "big"))
    finally:
        slabs.close()
    assert numbers == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4, 5, 6]
