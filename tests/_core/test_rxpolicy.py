"""RxDecider / RxLedger: request sizing, accounting and the copy-fallback detector."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zcnet._core.rxpolicy import COPY_REASONS, Request, RxDecider, RxLedger


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
        ([(61440, 4096)] * 8, False, "zerocopy"),  # 93.75 % mapped is fine
        ([(4096, 100_000)] * 8, False, "copy"),  # under 10 %
        ([(0, 0)] * 20 + [(61440, 0)] * 8, False, "zerocopy"),  # empty calls are ignored
    ],
)
def test_detector(calls: list[tuple[int, int]], force: bool, mode: str) -> None:
    d = RxDecider(probe_calls=8, force_zerocopy=force)
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


def test_after_probe_mapping_loss_is_not_judged() -> None:
    d = RxDecider(probe_calls=1)
    d.observe(4096, 0)
    for _ in range(100):
        d.observe(0, 4096)
    assert d.mode == "zerocopy"


def test_fall_back_first_reason_wins() -> None:
    d = RxDecider()
    d.fall_back("kernel said no")
    d.fall_back("other")
    assert d.mode == "copy" and d.fallback_reason == "kernel said no"


@pytest.mark.parametrize("kw", [{"page_size": 1000}, {"probe_calls": 0},
                                {"min_mapped_fraction": 1.5}])
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


@given(st.integers(1, 16), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 1 << 16)),
                                    max_size=40))
def test_detector_property(probe: int, calls: list[tuple[int, int]]) -> None:
    d = RxDecider(probe_calls=probe)
    data_calls = [(m, c) for m, c in calls if m + c][:probe]
    for m, c in calls:
        d.observe(m, c)
    if len(data_calls) < probe:
        assert d.mode == "zerocopy"
    else:
        mapped = sum(m for m, _ in data_calls)
        total = sum(m + c for m, c in data_calls)
        assert (d.mode == "copy") == (mapped < 0.1 * total)
