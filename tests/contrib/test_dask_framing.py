"""Pure logic of the zc:// wire format and of the completion holds."""

from __future__ import annotations

import pytest

from zcnet.contrib.dask.framing import (
    COUNT_SIZE,
    MAX_FRAMES,
    FramingError,
    Segment,
    decode_count,
    decode_sizes,
    encode_prelude,
    plan_segments,
)


@pytest.mark.parametrize("sizes", [[], [0], [1, 2, 3], [10**12, 0, 5], list(range(1000))])
def test_prelude_round_trip(sizes: list[int]) -> None:
    data = encode_prelude(sizes)
    assert len(data) == COUNT_SIZE * (1 + len(sizes))
    n = decode_count(data[:COUNT_SIZE])
    assert n == len(sizes)
    assert decode_sizes(data[COUNT_SIZE:], n) == sizes


def test_prelude_rejects_garbage() -> None:
    with pytest.raises(FramingError):
        decode_count((MAX_FRAMES + 1).to_bytes(8, "little"))
    with pytest.raises(FramingError):
        decode_sizes((1 << 60).to_bytes(8, "little"), 1)


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([], []),
        ([5, 6], [Segment(0, 2, False)]),
        ([100], [Segment(0, 1, True)]),
        ([5, 100, 6, 7, 100, 100],
         [Segment(0, 1, False), Segment(1, 2, True), Segment(2, 4, False),
          Segment(4, 5, True), Segment(5, 6, True)]),
        ([99, 100], [Segment(0, 1, False), Segment(1, 2, True)]),
    ],
)
def test_plan_segments(sizes: list[int], expected: list[Segment]) -> None:
    plan = plan_segments(sizes, threshold=100)
    assert plan == expected
    covered = [i for seg in plan for i in range(seg.start, seg.stop)]
    assert covered == list(range(len(sizes)))
