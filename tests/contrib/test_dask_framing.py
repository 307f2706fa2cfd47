"""Pure logic of the zc:// wire format and of the completion holds."""

from __future__ import annotations

import pytest

from zcnet.contrib.dask.framing import (
    COUNT_SIZE,
    JOINED,
    MAX_FRAMES,
    FramingError,
    Segment,
    decode_count,
    decode_sizes,
    encode_prelude,
    frame_groups,
    plan_segments,
)


@pytest.mark.parametrize("sizes", [[], [0], [1, 2, 3], [10**12, 0, 5], list(range(1000))])
def test_prelude_round_trip(sizes: list[int]) -> None:
    data = encode_prelude(sizes)
    assert len(data) == COUNT_SIZE * (1 + len(sizes))
    n = decode_count(data[:COUNT_SIZE])
    assert n == len(sizes)
    assert decode_sizes(data[COUNT_SIZE:], n) == (sizes, [False] * len(sizes))


def test_prelude_joined_flags() -> None:
    sizes, joined = [5, 1 << 40, 7, 7], [True, True, False, True]
    data = encode_prelude(sizes, joined)
    got_sizes, got_joined = decode_sizes(data[COUNT_SIZE:], 4)
    assert got_sizes == sizes
    assert got_joined == [False, True, False, True]  # the first frame cannot continue anything
    assert int.from_bytes(data[16:24], "little") == (1 << 40) | JOINED


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


def test_plan_groups_joined_large_frames_only() -> None:
    sizes = [5, 100, 100, 7, 6, 100, 100, 8]
    joined = [False, False, True, True, False, True, False, False]
    # frame 3 (short tail shard) joins the large group; frame 4 does not (not joined) and
    # frame 5 claims to continue a small frame: it starts its own group
    assert plan_segments(sizes, 100, joined) == [
        Segment(0, 1, False), Segment(1, 4, True), Segment(4, 5, False),
        Segment(5, 6, True), Segment(6, 7, True), Segment(7, 8, False)]


def test_frame_groups_one_buffer_per_frame_except_joined_shards() -> None:
    assert frame_groups([]) == []
    assert frame_groups([False, False, False]) == [(0, 1), (1, 2), (2, 3)]
    assert frame_groups([False, False, True, True, False]) == [(0, 1), (1, 4), (4, 5)]
    assert frame_groups([True, False]) == [(0, 1), (1, 2)]  # nothing to join the first to
