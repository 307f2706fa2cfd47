"""RxDecider / RxLedger: request sizing, accounting and the copy-fallback detector."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zcnet._core.rxpolicy import (
    COPY_REASONS,
    TRANSIENT_MAP_ERRNOS,
    UNSUPPORTED_MAP_ERRNOS,
    Request,
    RxDecider,
    RxLedger,
    map_error_kind,
)


@pytest.mark.parametrize(
    ("max_bytes", "window", "expected"),
    [
        (1, 2 << 20, None),
        (4095, 2 << 20, None),
        (4096, 2 << 20, Request(4096)),
        (10_000, 2 << 20, Request(8192)),
        (8 << 20, 2 << 20, Request(2 << 20)),
        (65536, 65536, Request(65536)),
    ],
)
def test_request_sizes(max_bytes: int, window: int, expected: Request | None) -> None:
    assert RxDecider().request(max_bytes, window) == expected


def test_request_rejects_nonpositive() -> None:
    with pytest.raises(ValueError):
        RxDecider().request(0, 4096)


@pytest.mark.parametrize(
    ("calls", "force", "mode"),
    [
        ([(0, 4095)] * 8, False, "copy"),  # nothing mapped: switch after probe_calls
        ([(0, 4095)] * 7, False, "zerocopy"),  # still probing
        ([(0, 4095)] * 8, True, "zerocopy"),  # forced
        ([(61440, 0)] * 8, False, "zerocopy"),
        ([(61440, 4024)] * 8, False, "copy"),  # default lo MTU: 94 % mapped in short cut runs
        ([(61440, 4024)] * 8, True, "zerocopy"),  # ... unless forced
        ([(1 << 20, 4024)] * 8, False, "zerocopy"),  # long runs, cut now and then: worth it
        ([(61440, 4024), (61440, 0)] * 4, False, "copy"),  # half the calls cut short
        ([(61440, 4024)] + [(61440, 0)] * 7, False, "zerocopy"),  # a message end, not the MSS
        ([(4096, 100_000)] * 8, False, "copy"),  # under 10 %
        ([(0, 0)] * 20 + [(61440, 0)] * 8, False, "zerocopy"),  # empty calls are ignored
    ],
)
def test_detector(calls: list[tuple[int, int]], force: bool, mode: str) -> None:
    d = RxDecider(probe_calls=8, force_zerocopy=force, cut_warmup=0)
    for mapped, copied in calls:
        d.observe(mapped, copied)
    assert d.mode == mode
    assert (d.fallback_reason is not None) == (mode == "copy")
    if mode == "copy":
        assert d.request(1 << 20, 2 << 20) is None
        assert d.copy_reason(1 << 20) == "copy_mode"


def test_detector_reports_switch_once_and_stops_probing() -> None:
    d = RxDecider(probe_calls=2)
    assert d.observe(0, 10) is False
    assert d.observe(0, 10) is True
    assert d.observe(0, 10) is False
    assert not d.probing
    assert d.fallback_reason and "0 of 20 bytes" in d.fallback_reason


def test_mapping_lost_later_is_detected() -> None:
    """A sender that stops using MSG_ZEROCOPY after its first copied completion."""
    d = RxDecider(probe_calls=4)
    for _ in range(40):
        d.observe(1 << 20, 0)
    assert d.mode == "zerocopy"
    switched = [d.observe(0, 65536) for _ in range(4)]
    assert switched == [False, False, False, True]
    assert d.mode == "copy" and d.fallback_reason and "not mappable" in d.fallback_reason


def test_connection_start_is_not_judged_by_run_length() -> None:
    """Measured start of a page-MSS stream: 8 calls of 7 pages + a 2 KB tail, then long runs."""
    d = RxDecider(probe_calls=8)
    for m, c in [(28672, 2048)] * 8 + [(524288, 0)] * 64:
        d.observe(m, c)
    assert d.mode == "zerocopy"
    for _ in range(24):  # but a steady state of short cut runs (default lo MTU) is
        d.observe(61440, 4024)
    assert d.mode == "copy"


def test_cut_runs_reason_names_the_cause() -> None:
    d = RxDecider(probe_calls=2, cut_warmup=0)
    d.observe(61440, 4024)
    assert d.observe(61440, 4024) is True
    assert d.fallback_reason and "cut by unmappable bytes" in d.fallback_reason


def test_fall_back_first_reason_wins() -> None:
    d = RxDecider()
    d.fall_back("kernel said no")
    d.fall_back("other")
    assert d.mode == "copy" and d.fallback_reason == "kernel said no"


@pytest.mark.parametrize("kw", [{"page_size": 1000}, {"probe_calls": 0},
                                {"min_mapped_fraction": 1.5}, {"min_cut_run": -1},
                                {"cut_warmup": -1}, {"min_map_bytes": -1},
                                {"max_backoff": 0}])
def test_decider_validation(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RxDecider(**kw)  # type: ignore[arg-type]


def test_ledger() -> None:
    led = RxLedger()
    assert led.mapped_fraction == 0.0
    led.mapped(3 * 4096)
    led.copied(4096, "skip_hint")
    led.copied(0, "copybuf_tail")
    assert led.bytes_mapped == 12288 and led.bytes_copied == 4096
    assert led.copy_reasons == {"skip_hint": 4096}
    assert led.mapped_fraction == 0.75
    with pytest.raises(ValueError):
        led.copied(1, "because")


@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.sampled_from(COPY_REASONS),
                          st.integers(0, 1 << 20)), max_size=50))
def test_ledger_totals(ops: list[tuple[int, str, int]]) -> None:
    led = RxLedger()
    for m, reason, c in ops:
        led.mapped(m)
        led.copied(c, reason)
    assert led.bytes_mapped == sum(m for m, _, _ in ops)
    assert led.bytes_copied == sum(led.copy_reasons.values()) == sum(c for _, _, c in ops)


def _model_switches(probe: int, calls: list[tuple[int, int]], cut_run: int, warmup: int) -> bool:
    """The detector's rule, written out plainly: judge each full run of ``probe`` data calls."""
    data = [(m, c) for m, c in calls if m + c]
    for start in range(0, len(data) - probe + 1, probe):
        run = data[start : start + probe]
        before = sum(m + c for m, c in data[:start])
        mapped = sum(m for m, _ in run)
        total = sum(m + c for m, c in run)
        cut = sum(1 for m, c in run if m and c)
        if mapped < 0.1 * total:
            return True
        if before >= warmup and 2 * cut >= probe and mapped < cut_run * probe:
            return True
    return False


@given(st.integers(1, 16), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 1 << 16)),
                                    max_size=60), st.sampled_from([0, 4096, 256 * 1024]),
       st.sampled_from([0, 100_000, 1 << 20]))
def test_detector_property(probe: int, calls: list[tuple[int, int]], cut_run: int,
                           warmup: int) -> None:
    d = RxDecider(probe_calls=probe, min_cut_run=cut_run, cut_warmup=warmup)
    for m, c in calls:
        d.observe(m, c)
    assert (d.mode == "copy") == _model_switches(probe, calls, cut_run, warmup)


@pytest.mark.parametrize(("max_bytes", "threshold", "mapped"),
                         [(4096, 16384, False), (16384, 16384, True), (20000, 16384, True),
                          (4096, 0, True), (4095, 0, False)])
def test_small_requests_below_the_map_threshold_copy(max_bytes: int, threshold: int,
                                                     mapped: bool) -> None:
    d = RxDecider(min_map_bytes=threshold)
    req = d.request(max_bytes, 2 << 20)
    assert (req is not None) == mapped
    if req is None:
        assert d.copy_reason(max_bytes) == "small_request"


def test_map_error_kinds() -> None:
    assert {errno.ENOMEM, errno.EAGAIN, errno.EMFILE, errno.ENFILE} == TRANSIENT_MAP_ERRNOS
    assert not TRANSIENT_MAP_ERRNOS & UNSUPPORTED_MAP_ERRNOS
    for code in TRANSIENT_MAP_ERRNOS:
        assert map_error_kind(code) == "transient"
    for code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.ENOPROTOOPT):
        assert map_error_kind(code) == "unsupported"
    for code in (errno.ECONNRESET, errno.EFAULT, None):
        assert map_error_kind(code) == "other"


def _skipped(d: RxDecider, n: int) -> int:
    """Requests (of 1 MiB) answered ``None`` for the backoff before mapping is tried again."""
    skipped = 0
    while d.request(1 << 20, 2 << 20) is None:
        assert d.copy_reason(1 << 20) == "map_backoff"
        skipped += 1
        assert skipped <= n, "the backoff is not bounded"
    return skipped


def test_transient_failure_backs_off_doubling_and_bounded() -> None:
    d = RxDecider(max_backoff=8)
    assert d.map_failed(errno.EMFILE)
    assert d.mode == "zerocopy" and d.backing_off and d.transient_failures == 1
    seen = [_skipped(d, 100)]
    for _ in range(5):  # failures in a row: 1, 2, 4, 8, 8, 8
        assert d.map_failed(errno.ENOMEM)
        seen.append(_skipped(d, 100))
    assert seen == [1, 2, 4, 8, 8, 8]
    assert d.retries == 6 and d.transient_failures == 6 and d.mode == "zerocopy"
    d.observe(1 << 20, 0)  # a successful call: the next backoff starts at 1 again
    assert d.map_failed(errno.EAGAIN)
    assert _skipped(d, 100) == 1


def test_backoff_skips_only_requests_that_would_map() -> None:
    d = RxDecider(min_map_bytes=16384)
    d.map_failed(errno.ENOMEM)
    assert d.request(4096, 2 << 20) is None and d.copy_reason(4096) == "small_request"
    assert d.backing_off  # a small request did not use up the backoff
    assert d.request(1 << 20, 2 << 20) is None and d.copy_reason(1 << 20) == "map_backoff"
    assert d.request(1 << 20, 2 << 20) == Request(1 << 20) and d.retries == 1


def test_permanent_failure_is_left_to_the_caller() -> None:
    d = RxDecider()
    assert not d.map_failed(errno.EOPNOTSUPP)
    assert not d.backing_off and d.transient_failures == 0 and d.mode == "zerocopy"
    d.fall_back("mmap of the socket failed: Operation not supported")
    assert d.request(1 << 20, 2 << 20) is None and d.copy_reason(1 << 20) == "copy_mode"
    assert d.map_failed(errno.ENOMEM)  # counted, but copy mode stays copy mode
    assert d.copy_reason(1 << 20) == "copy_mode"


def test_map_backoff_is_a_copy_reason() -> None:
    assert "map_backoff" in COPY_REASONS
    led = RxLedger()
    led.copied(10, "map_backoff")
    assert led.copy_reasons == {"map_backoff": 10}
