"""The completion tracker against a naive model; serial arithmetic; invalid ranges."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zcnet._core import serial
from zcnet._core.tracker import PyCompletionTracker
from zcnet.errors import InvalidCompletionError

try:  # both implementations whenever the extension is built, whatever zcnet._accel chose
    from zcnet._speedups import CompletionTracker as CCompletionTracker
except ImportError:  # pragma: no cover - the extension is not built
    CCompletionTracker = None

TOP = 2**32
IMPLEMENTATIONS = [
    pytest.param(PyCompletionTracker, id="python"),
    pytest.param(CCompletionTracker, id="c", marks=pytest.mark.skipif(
        CCompletionTracker is None, reason="the compiled extension zcnet._speedups is not built")),
]
CompletionTracker = PyCompletionTracker  # rebound per test by the fixture below


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Iterator[type[PyCompletionTracker[Any]]]:
    """The tracker implementation a test runs against (each test runs once per one)."""
    global CompletionTracker
    CompletionTracker = request.param
    yield request.param
    CompletionTracker = PyCompletionTracker


# -- serial arithmetic ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "lt"),
    [
        (0, 1, True),
        (1, 0, False),
        (TOP - 1, 0, True),  # wraps
        (0, TOP - 1, False),
        (5, 5, False),
        (0, 2**31 - 1, True),
        (0, 2**31, False),  # exactly half way: undefined, neither before nor after
        (2**31, 0, False),
    ],
)
def test_serial_lt(a: int, b: int, lt: bool) -> None:
    assert serial.lt(a, b) is lt
    assert serial.le(a, b) is (lt or a == b)


@pytest.mark.parametrize(
    ("lo", "hi", "width"),
    [(0, 0, 1), (0, 9, 10), (TOP - 2, 1, 4), (5, 4, TOP), (TOP - 1, TOP - 1, 1)],
)
def test_serial_range_width(lo: int, hi: int, width: int) -> None:
    assert serial.range_width(lo, hi) == width
    assert serial.add(lo, width - 1) == hi


# -- table-driven checks -------------------------------------------------------------------
def _tracker(start: int, sends: int) -> CompletionTracker[str]:
    t: CompletionTracker[str] = CompletionTracker(start)
    for i in range(sends):
        t.record_send(f"t{i}", 100)
    return t


@pytest.mark.parametrize(
    ("start", "sends", "lo", "hi", "why"),
    [
        (0, 0, 0, 0, "nothing was sent"),
        (0, 5, 5, 5, "one past the last send"),
        (0, 5, 0, 5, "reaches one past the last send"),
        (0, 5, 3, 2, "lo > hi means a 2**32-wide wrapped range"),
        (0, 5, TOP - 1, 0, "starts before the first send"),
        (0, 5, TOP - 1, TOP - 1, "before the first send"),
        (TOP - 3, 5, TOP - 3, 2, "reaches one past the last send across the wrap"),
        (TOP - 3, 5, TOP - 4, 0, "starts before the first send across the wrap"),
        (0, 5, 0, 2**31, "more than 2**31 wide"),
        (0, 5, -1, 3, "not a u32"),
        (0, 5, 0, TOP, "not a u32"),
        (7, 5, 100, 200, "far beyond"),
    ],
)
def test_invalid_ranges_release_nothing(
    impl: Any, start: int, sends: int, lo: int, hi: int, why: str,
) -> None:
    t = _tracker(start, sends)
    with pytest.raises(InvalidCompletionError):
        t.complete(lo, hi, copied=False)
    assert t.outstanding == sends, why
    if sends:
        for i in range(sends):
            t.seal(f"t{i}")
        res = t.complete(start, serial.add(start, sends - 1), copied=False)
        assert res.calls == sends


def test_huge_send_count_window(impl: Any) -> None:
    """A range wider than 2**31 is rejected even when more than 2**31 values were sent."""
    t: CompletionTracker[int] = CompletionTracker()
    t._n = 2**31 + 10  # the pure bookkeeping of many sends, without making them
    with pytest.raises(InvalidCompletionError):
        t.complete(0, 2**31, copied=False)
    # 2**31 wide, ending at the last value: fine (nothing outstanding to release)
    assert t.complete(10, 2**31 + 9, copied=False).calls == 0
    with pytest.raises(InvalidCompletionError):  # one older than the 2**31 window
        t.complete(9, 2**31 + 8, copied=False)


def test_wrapping_coalesced_range_and_partial_ticket(impl: Any) -> None:
    t: CompletionTracker[str] = CompletionTracker(TOP - 2)
    assert t.record_send("a", 10) == TOP - 2
    assert t.record_send("a", 10) == TOP - 1
    assert t.record_send("a", 10) == 0  # one ticket spanning three calls (partial sends)
    assert t.record_send("b", 5) == 1
    assert t.next_value == 2
    res = t.complete(TOP - 2, 1, copied=True)
    assert (res.calls, res.nbytes, res.copied) == (4, 35, True)
    assert res.done == ()  # nothing sealed yet
    assert t.seal("a") is True and t.seal("b") is True
    assert t.outstanding == 0 and t.pending_tokens == 0


def test_out_of_order_and_repeats(impl: Any) -> None:
    t: CompletionTracker[str] = CompletionTracker()
    for name in "abcde":
        t.record_send(name, 1)
        assert t.seal(name) is None
    assert t.complete(3, 3, copied=False).done == ("d",)
    assert t.complete(1, 1, copied=True).done == ("b",)
    assert t.complete(3, 3, copied=False).calls == 0  # repeat: nothing released twice
    res = t.complete(0, 4, copied=False)
    assert res.done == ("a", "c", "e") and res.calls == 3
    assert t.is_outstanding(0) is False and t.outstanding == 0


def test_token_copied_if_any_call_copied(impl: Any) -> None:
    t: CompletionTracker[str] = CompletionTracker()
    t.record_send("x", 1)
    t.record_send("x", 1)
    t.complete(0, 0, copied=True)
    res = t.complete(1, 1, copied=False)
    assert res.done == ()
    assert t.seal("x") is True
    t.record_send("y", 1)
    assert t.seal("y") is None
    assert t.complete(2, 2, copied=False).done_copied == (False,)


def test_seal_unknown_token_and_record_after_seal(impl: Any) -> None:
    t: CompletionTracker[str] = CompletionTracker()
    assert t.seal("never-sent") is False
    t.record_send("z", 1)
    t.seal("z")
    with pytest.raises(ValueError):
        t.record_send("z", 1)
    with pytest.raises(ValueError):
        CompletionTracker(TOP)


def test_record_batch_wraps_and_completes_like_singles(impl: Any) -> None:
    t: CompletionTracker[str] = CompletionTracker(TOP - 2)
    assert t.record_batch([], []) == TOP - 2 and t.sent == 0
    assert t.record_batch(["a", "b", "c", "d"], [10, 20, 30, 40]) == TOP - 2
    assert t.record_single("e", 50) == 2
    assert (t.sent, t.outstanding, t.pending_tokens, t.next_value) == (5, 5, 5, 3)
    res = t.complete(TOP - 1, 1, copied=False)  # b, c, d: across the wrap
    assert (res.calls, res.nbytes, res.done, res.done_copied) == (
        3, 90, ("b", "c", "d"), (False, False, False),
    )
    res = t.complete(TOP - 2, 2, copied=True)  # a and e; b..d repeated: nothing twice
    assert (res.calls, res.done, res.done_copied) == (2, ("a", "e"), (True, True))
    assert t.outstanding == 0 and t.pending_tokens == 0
    with pytest.raises(ValueError, match="sizes"):
        t.record_batch(["x"], [])


def test_long_run_with_a_straggler(impl: Any) -> None:
    """Many sends completed in waves while the first one stays outstanding, across the wrap
    (the compiled tracker's slot array grows and compacts meanwhile)."""
    t: PyCompletionTracker[int] = CompletionTracker(TOP - 5000)
    t.record_single(-1, 3)
    sent = 1
    for wave in range(20):
        first = t.next_value
        for i in range(1000 + wave * 37):
            t.record_single(wave * 10_000 + i, 1)
        sent += 1000 + wave * 37
        res = t.complete(first, serial.add(t.next_value, -1), copied=wave % 2 == 0)
        assert res.calls == 1000 + wave * 37 == len(res.done)
        assert list(res.done) == [wave * 10_000 + i for i in range(res.calls)]
        assert t.outstanding == 1 and t.pending_tokens == 1 and t.sent == sent
    assert t.is_outstanding(TOP - 5000) is True
    assert t.complete(TOP - 5000, TOP - 5000, copied=False).done == (-1,)
    assert t.outstanding == 0 and list(t.tokens()) == []


# -- state machine against a naive model ---------------------------------------------------
class TrackerMachine(RuleBasedStateMachine):
    """Model: the set of outstanding sequence numbers, their tokens, sealed tokens."""

    tracker_class: Any = PyCompletionTracker

    def __init__(self) -> None:
        super().__init__()
        self.t: PyCompletionTracker[int] = self.tracker_class()
        self.start = 0
        self.n = 0
        self.owner: dict[int, int] = {}  # outstanding seq -> token
        self.calls: dict[int, set[int]] = {}  # token -> its outstanding seqs
        self.copied: dict[int, bool] = {}
        self.sealed: set[int] = set()
        self.open_token: int | None = None
        self.next_token = 0

    @initialize(
        start=st.one_of(
            st.integers(TOP - 40, TOP - 1), st.integers(0, TOP - 1), st.just(TOP - 1)
        )
    )
    def init(self, start: int) -> None:
        self.start = start
        self.t = self.tracker_class(start)

    def value(self, seq: int) -> int:
        return (self.start + seq) % TOP

    @rule(new_token=st.booleans())
    def send(self, new_token: bool) -> None:
        if self.open_token is None or new_token:
            if self.open_token is not None:
                self.seal()
            self.open_token = self.next_token
            self.next_token += 1
            self.calls[self.open_token] = set()
            self.copied[self.open_token] = False
        tok = self.open_token
        assert self.t.record_send(tok, 7) == self.value(self.n)
        self.owner[self.n] = tok
        self.calls[tok].add(self.n)
        self.n += 1

    @rule()
    def send_single(self) -> None:
        tok = self.next_token
        self.next_token += 1
        assert self.t.record_single(tok, 7) == self.value(self.n)
        self.owner[self.n] = tok
        self.calls[tok] = {self.n}
        self.copied[tok] = False
        self.sealed.add(tok)
        self.n += 1

    @rule(k=st.integers(0, 5))
    def send_batch(self, k: int) -> None:
        toks = list(range(self.next_token, self.next_token + k))
        self.next_token += k
        assert self.t.record_batch(toks, [7] * k) == self.value(self.n)
        for tok in toks:
            self.owner[self.n] = tok
            self.calls[tok] = {self.n}
            self.copied[tok] = False
            self.sealed.add(tok)
            self.n += 1

    @precondition(lambda self: self.open_token is not None)
    @rule()
    def seal(self) -> None:
        tok = self.open_token
        assert tok is not None
        self.open_token = None
        got = self.t.seal(tok)
        if self.calls[tok]:
            assert got is None
            self.sealed.add(tok)
        else:
            assert got is self.copied[tok]
            del self.calls[tok]

    @precondition(lambda self: self.n > 0)
    @rule(data=st.data(), copied=st.booleans())
    def complete(self, data: st.DataObject, copied: bool) -> None:
        hi = data.draw(st.integers(0, self.n - 1))
        lo = data.draw(st.integers(max(0, hi - 20), hi))
        res = self.t.complete(self.value(lo), self.value(hi), copied)
        released = [s for s in range(lo, hi + 1) if s in self.owner]
        expected_done = []
        for s in released:
            tok = self.owner.pop(s)
            self.calls[tok].discard(s)
            if copied:
                self.copied[tok] = True
            if not self.calls[tok] and tok in self.sealed:
                expected_done.append(tok)
                self.sealed.discard(tok)
                del self.calls[tok]
        assert res.calls == len(released)
        assert res.nbytes == 7 * len(released)
        assert list(res.done) == expected_done
        assert list(res.done_copied) == [self.copied[t] for t in expected_done]

    @precondition(lambda self: self.n > 0)
    @rule(data=st.data())
    def complete_invalid(self, data: st.DataObject) -> None:
        lo = data.draw(st.integers(0, self.n + 5))
        beyond = data.draw(st.integers(self.n, self.n + 30))
        with pytest.raises(InvalidCompletionError):
            self.t.complete(self.value(min(lo, beyond)), self.value(beyond), False)

    @rule()
    def complete_nothing_sent_yet_or_wrapped(self) -> None:
        # the whole u32 circle is never a valid range
        with pytest.raises(InvalidCompletionError):
            self.t.complete(self.value(1), self.value(0), False)

    @invariant()
    def agrees(self) -> None:
        assert self.t.outstanding == len(self.owner)
        assert self.t.sent == self.n
        assert self.t.next_value == self.value(self.n)
        assert self.t.pending_tokens == len(self.calls)
        assert sorted(self.t.tokens()) == sorted(self.calls)
        for s in (0, self.n - 1, self.n // 2):
            if 0 <= s < self.n:
                assert self.t.is_outstanding(self.value(s)) is (s in self.owner)


TrackerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tracker_state_machine = TrackerMachine.TestCase


class CTrackerMachine(TrackerMachine):
    """The same model against the compiled tracker."""

    tracker_class = CCompletionTracker


CTrackerMachine.TestCase.settings = TrackerMachine.TestCase.settings
test_c_tracker_state_machine = pytest.mark.skipif(
    CCompletionTracker is None, reason="the compiled extension zcnet._speedups is not built",
)(CTrackerMachine.TestCase)


class _CountingDict(dict[int, tuple[int, int, object]]):
    pops = 0

    def pop(self, *args: object) -> tuple[int, int, object]:  # type: ignore[override]
        _CountingDict.pops += 1
        return super().pop(*args)  # type: ignore[arg-type]


def test_cost_is_per_completed_call_not_per_range_value(impl: Any) -> None:
    """Structural check (no timing): repeats and already-completed parts touch no entry."""
    if impl is not PyCompletionTracker:
        pytest.skip("counts dict operations of the Python tracker (the C one keeps no dict)")
    t: CompletionTracker[int] = CompletionTracker(TOP - 1000)
    t._owner = _CountingDict()  # type: ignore[assignment]
    for i in range(20_000):
        t.record_single(i, 1)
    assert t.complete(TOP - 1000, serial.add(TOP - 1000, 9_999), copied=False).calls == 10_000
    assert _CountingDict.pops == 10_000
    # the whole range again: only the 10_000 still outstanding are visited
    assert t.complete(TOP - 1000, serial.add(TOP - 1000, 19_999), copied=False).calls == 10_000
    assert _CountingDict.pops == 20_000
    assert t.complete(TOP - 1000, serial.add(TOP - 1000, 19_999), copied=False).calls == 0
    assert _CountingDict.pops == 20_000
    assert t._starts == [] and t.outstanding == 0
