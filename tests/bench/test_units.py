"""Pure pieces of the benchmark: sizes, host:port, statistics, header, pattern checks."""

from __future__ import annotations

import argparse

import pytest

from zcnet.bench.cli import parse_size
from zcnet.bench.common import group_summary, rotated
from zcnet.bench.pattern import PERIOD, PatternMismatch, Source, Verifier
from zcnet.bench.protocol import HEADER_SIZE, ProtocolError, decode_header, encode_header
from zcnet.bench.server import parse_hostport
from zcnet.bench.stats import Summary, ratio_percent, summarize


@pytest.mark.parametrize(("text", "value"), [
    ("4096", 4096), ("4K", 4096), ("4k", 4096), ("64KiB", 65536), ("1M", 1 << 20),
    ("2MB", 2 << 20), ("1G", 1 << 30),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "4X", "-1", "0", "1.5M", "4 K B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [
    ("127.0.0.1:5201", ("127.0.0.1", 5201)), ("[::1]:80", ("::1", 80)),
    ("host.example:0", ("host.example", 0)),
])
def test_parse_hostport(text: str, value: tuple[str, int]) -> None:
    assert parse_hostport(text) == value


@pytest.mark.parametrize("text", ["5201", ":5201", "h:", "h:x", "::1:80", "h:70000"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_summarize_and_ratio() -> None:
    assert summarize([]) is None
    s = summarize([3.0, 1.0, 2.0])
    assert s == Summary(2.0, 1.0, 3.0, 3)
    assert ratio_percent(Summary(1.0, 1, 1, 1), Summary(2.0, 2, 2, 1)) == 50.0
    assert ratio_percent(None, s) is None
    assert ratio_percent(s, Summary(0.0, 0, 0, 1)) is None


def test_rotated_alternates_order() -> None:
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotated(["a", "b"], 3) == ["b", "a"]
    assert rotated([], 2) == []


def test_group_summary_uses_successful_timed_runs_only() -> None:
    runs = [
        {"role": "timed", "ok": True, "mode": "a", "metrics": {"x": 1.0}},
        {"role": "timed", "ok": True, "mode": "a", "metrics": {"x": 3.0}},
        {"role": "verify", "ok": True, "mode": "a", "metrics": {"x": 100.0}},
        {"role": "timed", "ok": False, "mode": "a", "metrics": {"x": None}},
        {"role": "timed", "ok": True, "mode": "b", "metrics": {"x": None}},
    ]
    out = group_summary(runs, ("mode",), ("x",))
    assert out == [
        {"mode": "a", "metrics": {"x": {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}}},
        {"mode": "b", "metrics": {}},
    ]


def test_header_roundtrip_is_one_page() -> None:
    raw = encode_header({"op": "stream", "bytes": 5})
    assert len(raw) == HEADER_SIZE
    assert decode_header(raw) == {"op": "stream", "bytes": 5}
    with pytest.raises(ProtocolError):
        decode_header(b"\xff" * HEADER_SIZE)
    with pytest.raises(ProtocolError):
        decode_header(b"[1]".ljust(HEADER_SIZE))


def test_verifier_full_and_spot_checks() -> None:
    v = Verifier(span=8192)
    data = bytes(v.window(1000, 20000 - 12000))
    v.verify(1000, data)
    v.spot(1000, data)
    bad = bytearray(data)
    bad[4000] ^= 1
    with pytest.raises(PatternMismatch):
        v.verify(1000, bad)
    v.spot(1000, bad)  # a spot check only looks at the ends
    bad[-1] ^= 1
    with pytest.raises(PatternMismatch):
        v.spot(1000, bad)
    with pytest.raises(PatternMismatch):
        v.verify(1001, data)


def test_source_windows_match_the_stream_across_the_wrap() -> None:
    v = Verifier(span=PERIOD + 8192)
    src = Source(v, 10 * PERIOD, max_msg=8192)
    assert src.cold
    for off in (0, 1, PERIOD - 1, 10 * PERIOD - 100, 10 * PERIOD, 37 * PERIOD + 12345):
        assert bytes(src.window(off, 8192)) == bytes(v.window(off, 8192))
    assert src.window(0, 16).readonly


def test_small_source_is_the_hot_pattern_buffer() -> None:
    v = Verifier(span=1 << 20)
    src = Source(v, 1 << 20, max_msg=4096)
    assert not src.cold
    assert bytes(src.window(123, 4096)) == bytes(v.window(123, 4096))


def test_mode_unavailable_is_one_zcnet_error() -> None:
    import zcnet.bench.aio_modes as aio_modes
    import zcnet.bench.receivers as receivers
    import zcnet.bench.senders as senders
    from zcnet.errors import ModeUnavailable, ZcnetError, ZerocopyUnavailable

    assert receivers.ModeUnavailable is aio_modes.ModeUnavailable is ModeUnavailable
    assert senders.ModeUnavailable is ModeUnavailable
    assert issubclass(ModeUnavailable, ZcnetError) and issubclass(ModeUnavailable, RuntimeError)
    assert not issubclass(ModeUnavailable, ZerocopyUnavailable)  # "uvloop missing" is not that
    with pytest.raises(ModeUnavailable, match="unknown loop"):
        aio_modes.loop_factory("no-such-loop")


def test_harness_errors_stay_outside_the_library_hierarchy() -> None:
    from zcnet.bench.workers import WorkerError
    from zcnet.errors import ZcnetError

    # failures of the benchmark's own processes and byte checks, not of the library
    for cls in (ProtocolError, WorkerError, PatternMismatch):
        assert not issubclass(cls, ZcnetError)
    assert issubclass(PatternMismatch, AssertionError)
