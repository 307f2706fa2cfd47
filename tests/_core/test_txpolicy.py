"""The sans-I/O send policy: threshold, copied fallback, ENOBUFS rounds, counters."""

from __future__ import annotations

import dataclasses

import pytest

from zcnet._core.txpolicy import (
    ENOBUFS_COPIES_BEFORE_FALLBACK,
    EnobufsAction,
    SendPolicy,
    TxController,
)


def test_defaults_match_contract() -> None:
    p = SendPolicy()
    assert (p.zerocopy_threshold, p.force_zerocopy, p.copied_fallback_after) == (10240, False, 1)
    assert (p.enobufs_retries, p.drain_timeout) == (8, 5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.force_zerocopy = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"zerocopy_threshold": -1},
        {"copied_fallback_after": 0},
        {"enobufs_retries": -1},
        {"drain_timeout": -0.1},
    ],
)
def test_invalid_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SendPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("nbytes", "zc"), [(0, False), (10239, False), (10240, True), (1 << 20, True)]
)
def test_threshold(nbytes: int, zc: bool) -> None:
    assert TxController(SendPolicy()).use_zerocopy(nbytes) is zc


@pytest.mark.parametrize(
    ("force", "after", "copied_calls", "mode"),
    [
        (False, 1, [1], "copy"),
        (False, 3, [1, 1], "zerocopy"),
        (False, 3, [1, 2], "copy"),
        (True, 1, [5, 5], "zerocopy"),
    ],
)
def test_copied_fallback(force: bool, after: int, copied_calls: list[int], mode: str) -> None:
    c = TxController(SendPolicy(force_zerocopy=force, copied_fallback_after=after))
    for calls in copied_calls:
        c.on_zerocopy_sent(100 * calls)
        c.on_completion(calls, 100 * calls, copied=True)
    assert c.mode == mode
    assert (c.fallback_reason is None) is (mode == "zerocopy")
    s = c.stats()
    assert s.bytes_copied == 100 * sum(copied_calls) and s.bytes_pending == 0
    assert s.completions == sum(copied_calls) and s.notifications == len(copied_calls)


def test_uncopied_completion_keeps_zerocopy() -> None:
    c = TxController(SendPolicy())
    c.on_zerocopy_sent(5000)
    c.on_completion(1, 5000, copied=False)
    c.on_completion(0, 0, copied=True)  # a repeated notification releases nothing
    assert c.mode == "zerocopy"
    assert c.stats().bytes_zerocopy == 5000


def test_enobufs_rounds_then_copy_and_reset() -> None:
    c = TxController(SendPolicy(enobufs_retries=2))
    assert [c.on_enobufs() for _ in range(3)] == [
        EnobufsAction.REAP_AND_RETRY,
        EnobufsAction.REAP_AND_RETRY,
        EnobufsAction.COPY,
    ]
    assert c.on_enobufs() is EnobufsAction.REAP_AND_RETRY  # a new round after the copy
    waits = [c.enobufs_wait()]
    c.on_enobufs()
    waits.append(c.enobufs_wait())
    assert waits[0] < waits[1] <= 0.05
    c.on_zerocopy_sent(1)  # success resets the round
    assert c.enobufs_round == 0
    assert c.stats().enobufs == 5
    z = TxController(SendPolicy(enobufs_retries=0))
    assert z.on_enobufs() is EnobufsAction.COPY


@pytest.mark.parametrize(("force", "mode"), [(False, "copy"), (True, "zerocopy")])
def test_enobufs_with_nothing_outstanding_copies_at_once(force: bool, mode: str) -> None:
    c = TxController(SendPolicy(force_zerocopy=force))
    for _ in range(ENOBUFS_COPIES_BEFORE_FALLBACK - 1):
        assert c.on_enobufs(outstanding=0) is EnobufsAction.COPY
    assert c.mode == "zerocopy"
    c.on_zerocopy_sent(1)  # a success resets the streak
    for _ in range(ENOBUFS_COPIES_BEFORE_FALLBACK):
        assert c.on_enobufs(outstanding=0) is EnobufsAction.COPY
    assert c.mode == mode
    assert (c.fallback_reason is not None) is (not force)


def test_disable_keeps_first_reason_and_counts() -> None:
    c = TxController(SendPolicy())
    c.disable("first")
    c.disable("second")
    c.on_plain_sent(10, calls=2)
    c.on_other_error()
    s = c.stats()
    assert (s.mode, s.fallback_reason, s.sends_plain, s.bytes_plain, s.other_errors) == (
        "copy", "first", 2, 10, 1,
    )
    assert not c.use_zerocopy(1 << 30)


def test_zerocopy_batch_counts_calls_and_resets_enobufs_rounds() -> None:
    ctl = TxController(SendPolicy())
    ctl.on_enobufs(1)
    assert ctl.enobufs_round == 1
    ctl.on_zerocopy_batch(32, 32 * 65536)
    st = ctl.stats()
    assert (st.sends_zerocopy, st.bytes_pending, st.enobufs) == (32, 32 * 65536, 1)
    assert ctl.enobufs_round == 0 and ctl.enobufs_copies == 0
    ctl.on_completion(32, 32 * 65536, copied=False)
    assert ctl.stats().bytes_zerocopy == 32 * 65536 and ctl.stats().bytes_pending == 0
