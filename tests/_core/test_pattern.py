"""StreamPattern: offsets determine bytes; any corruption, shift or reorder is caught."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zcnet._core.pattern import StreamPattern

PATTERN = StreamPattern(max_block=300_000)


@given(st.integers(0, 10**12), st.integers(0, 150_000), st.integers(1, 150_000))
def test_blocks_concatenate_to_the_stream(offset: int, first: int, second: int) -> None:
    joined = bytes(PATTERN.block(offset, first)) + bytes(PATTERN.block(offset + first, second))
    assert PATTERN.matches(offset, joined)
    assert bytes(PATTERN.block(offset, first + second)) == joined


@given(st.integers(0, 10**9), st.integers(1, 200_000), st.data())
def test_any_single_byte_flip_is_caught(offset: int, size: int, data: st.DataObject) -> None:
    buf = bytearray(PATTERN.block(offset, size))
    i = data.draw(st.integers(0, size - 1))
    buf[i] ^= data.draw(st.integers(1, 255))
    assert not PATTERN.matches(offset, buf)


@pytest.mark.parametrize("shift", [1, 4096, 61440, 65536])
def test_shifted_stream_is_caught(shift: int) -> None:
    assert not PATTERN.matches(shift, PATTERN.block(0, 200_000))


def test_matches_checks_data_longer_than_one_block() -> None:
    big = StreamPattern(max_block=1000)
    data = b"".join(bytes(big.block(off, 1000)) for off in range(0, 10_000, 1000))
    assert big.matches(0, data)
    assert not big.matches(0, data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize("args", [(0, -1), (-1, 10), (0, 300_001)])
def test_bad_block_requests_raise(args: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="outside"):
        PATTERN.block(*args)
