"""The sans-I/O send engine against a model of the kernel's send side.

The model accepts, refuses or shortens each send call as a script says, numbers successful
zero-copy calls the way the kernel's u32 counter does, and reports completions (coalesced,
possibly out of order, copied or not). Whatever the script, the engine must hand every byte to
the kernel exactly once and in order, keep its tracker in step with the kernel's counter, and
finish every ticket once its calls completed.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcnet._core.sendop import SendEngine, SendOp, Step
from zcnet._core.tracker import ZerocopyCompletion
from zcnet._core.txpolicy import PLAIN_ENOBUFS_ATTEMPTS, ZC_CHUNK, SendPolicy
from zcnet.errors import ConnectionResetByPeer, SendError, ZcnetError


class FakeTicket:
    """The ticket interface the engine needs."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.zerocopy = False
        self.done = False
        self.copied: bool | None = None
        self.error: ZcnetError | None = None

    def _finish(self, copied: bool) -> None:
        assert not self.done, "finished twice"
        self.done = True
        self.copied = copied

    def _fail(self, error: ZcnetError) -> None:
        if self.error is None:
            self.error = error


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt / an exception raised by a signal handler."""


@dataclass
class Kernel:
    """The kernel's send side as the engine sees it."""

    stream: bool
    script: list[str] = field(default_factory=list)
    copied: bool = False
    counter: int = 0  # zero-copy calls that took a value
    outstanding: list[int] = field(default_factory=list)
    pieces: list[tuple[int, int, int, bool]] = field(default_factory=list)  # (send, start, end, zc)
    send_no: int = 0

    def send(self, start: int, end: int, zc: bool) -> int:
        what = self.script.pop(0) if self.script else "ok"
        if what == "zc_enobufs":  # the notification budget: only zero-copy calls hit it
            what = "enobufs" if zc else "ok"
        if what in ("enobufs", "eagain", "reset", "emsgsize"):
            code = {"enobufs": errno.ENOBUFS, "eagain": errno.EAGAIN,
                    "reset": errno.ECONNRESET, "emsgsize": errno.EMSGSIZE}[what]
            raise OSError(code, what)
        n = end - start
        if what == "partial" and self.stream and n > 1:
            n = n // 3 or 1
        self.pieces.append((self.send_no, start, start + n, zc))
        if zc:
            self.outstanding.append(self.counter)
            self.counter += 1
        return n

    def completions(self, reverse: bool = False) -> list[ZerocopyCompletion]:
        """Every outstanding call, as coalesced ranges (optionally newest first)."""
        values = sorted(self.outstanding)
        self.outstanding.clear()
        ranges: list[ZerocopyCompletion] = []
        for v in values:
            if ranges and ranges[-1].hi == v - 1:
                ranges[-1] = ZerocopyCompletion(ranges[-1].lo, v, self.copied)
            else:
                ranges.append(ZerocopyCompletion(v, v, self.copied))
        return ranges[::-1] if reverse else ranges


def drive(engine: SendEngine[FakeTicket], op: SendOp[FakeTicket], kernel: Kernel,
          interrupt_at: int | None = None, took_known: bool = True) -> list[Step]:
    """Perform the operation's steps against ``kernel``; return the steps taken.

    ``interrupt_at``: raise :class:`Interrupt` right after the kernel accepted that send call
    (0-based among the SEND steps), before the engine hears of it.
    """
    steps: list[Step] = []
    sends = 0
    try:
        while True:
            step = op.next()
            steps.append(step)
            assert len(steps) < 10_000, "the operation does not end"
            if step is Step.SEND:
                assert op.in_call
                try:
                    n = kernel.send(op.start, op.end, op.zerocopy)
                except OSError as e:
                    err = op.failed(e)
                    if err is not None:
                        raise err from e
                    continue
                if interrupt_at is not None and sends == interrupt_at:
                    raise Interrupt
                sends += 1
                op.sent(n)
            elif step in (Step.REAP, Step.WAIT_COMPLETIONS):
                engine.apply(kernel.completions())
            elif step is Step.WAIT_WRITABLE:
                pass
            else:
                break
    except Interrupt as exc:
        took = None
        if took_known:
            took = kernel.pieces[-1][2] - kernel.pieces[-1][1] if op.in_call else 0
        op.interrupted(exc, took if op.in_call else None)
        raise
    engine.finish(op)
    return steps


def send(engine: SendEngine[FakeTicket], kernel: Kernel, nbytes: int, **kw: object
         ) -> tuple[FakeTicket, list[Step]]:
    ticket = FakeTicket(nbytes)
    kernel.send_no += 1
    op = engine.begin(ticket, nbytes)
    return ticket, drive(engine, op, kernel, **kw)  # type: ignore[arg-type]


def covered(kernel: Kernel, send_no: int) -> list[tuple[int, int]]:
    return [(a, b) for s, a, b, _ in kernel.pieces if s == send_no]


def assert_contiguous(kernel: Kernel, send_no: int, nbytes: int) -> None:
    off = 0
    for a, b in covered(kernel, send_no):
        assert a == off, f"piece starts at {a}, expected {off}"
        off = b
    assert off == nbytes


FORCED = SendPolicy(force_zerocopy=True)


# -- table-driven ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stream", "nbytes", "script", "zc_calls", "plain_bytes"),
    [
        (True, 100_000, [], 1, 0),  # one call
        (True, 3 * ZC_CHUNK + 5, [], 4, 0),  # ZC_CHUNK pieces
        (True, 3 * ZC_CHUNK, ["partial", "partial"], 5, 0),  # partial sends continue
        (True, 2 * ZC_CHUNK, ["eagain", "ok", "eagain"], 2, 0),  # wait for room, same piece
        (True, 100_000, ["enobufs"], 0, 100_000),  # nothing outstanding to reap: copy
        (False, 60_000, [], 1, 0),  # a datagram is one call
        (False, 60_000, ["enobufs"], 0, 60_000),
        (True, 5_000, [], 0, 5_000),  # below the threshold: a copy
        (False, 0, [], 0, 0),  # an empty datagram is one (copying) call
    ],
)
def test_table(stream: bool, nbytes: int, script: list[str], zc_calls: int,
               plain_bytes: int) -> None:
    engine: SendEngine[FakeTicket] = SendEngine(SendPolicy(), stream=stream)
    kernel = Kernel(stream, list(script))
    ticket, steps = send(engine, kernel, nbytes)
    assert_contiguous(kernel, 1, nbytes)
    assert kernel.counter == zc_calls == engine.tracker.sent
    assert engine.ctl.bytes_plain == plain_bytes
    assert engine.handed == nbytes
    if "eagain" in script:
        assert Step.WAIT_WRITABLE in steps
    engine.apply(kernel.completions())
    assert ticket.done and ticket.error is None
    assert ticket.zerocopy is (zc_calls > 0)
    assert engine.tracker.pending_tokens == 0


def test_enobufs_with_outstanding_calls_reaps_and_retries() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=True)
    kernel = Kernel(True)
    first, _ = send(engine, kernel, 200_000)
    assert not first.done
    kernel.script = ["enobufs"]
    second, steps = send(engine, kernel, 200_000)
    assert Step.WAIT_COMPLETIONS in steps  # it waited for completions, then retried zero-copy
    assert first.done and second.zerocopy and not second.done
    assert engine.ctl.enobufs == 1 and engine.ctl.bytes_plain == 0
    assert kernel.pieces[-1][3] is True


def test_enobufs_storm_copies_piece_by_piece_then_falls_back() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(SendPolicy(), stream=True)
    kernel = Kernel(True, ["zc_enobufs"] * 100)
    ticket, _ = send(engine, kernel, 20 * ZC_CHUNK)
    assert_contiguous(kernel, 1, 20 * ZC_CHUNK)
    assert engine.ctl.mode == "copy"
    assert "ENOBUFS" in (engine.ctl.fallback_reason or "")
    assert ticket.done and not ticket.zerocopy


def test_plain_enobufs_is_bounded_back_pressure() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(SendPolicy(), stream=False)
    kernel = Kernel(False, ["enobufs"] * (PLAIN_ENOBUFS_ATTEMPTS + 1))
    with pytest.raises(SendError):
        send(engine, kernel, 1000)
    assert engine.failure is None  # UDP: one datagram failed, the socket goes on
    kernel.script = ["enobufs"] * 3
    ticket, steps = send(engine, kernel, 1000)
    assert steps.count(Step.WAIT_COMPLETIONS) == 3 and ticket.done


def test_switch_to_copy_mode_midway_copies_the_rest() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(SendPolicy(), stream=True)
    kernel = Kernel(True, copied=True)
    ticket = FakeTicket(4 * ZC_CHUNK)
    op = engine.begin(ticket, ticket.nbytes)
    assert op.next() is Step.SEND and op.zerocopy
    op.sent(kernel.send(op.start, op.end, op.zerocopy))
    engine.apply(kernel.completions())  # copied: the policy switches to copy mode
    assert engine.ctl.mode == "copy"
    assert op.next() is Step.SEND and not op.zerocopy and op.end == ticket.nbytes
    op.sent(kernel.send(op.start, op.end, op.zerocopy))
    assert op.next() is Step.DONE
    assert engine.finish(op) is True  # the one zero-copy call was reported copied
    assert ticket.done and ticket.copied is True


def test_tcp_error_fails_every_pending_ticket_and_the_engine() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=True)
    kernel = Kernel(True)
    first, _ = send(engine, kernel, 100_000)
    kernel.script = ["reset"]
    with pytest.raises(ConnectionResetByPeer):
        send(engine, kernel, 100_000)
    assert isinstance(first.error, ConnectionResetByPeer) and not first.done
    assert isinstance(engine.failure, ConnectionResetByPeer)
    engine.apply(kernel.completions())  # a late completion still finishes it
    assert first.done


def test_udp_error_fails_one_datagram() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=False)
    kernel = Kernel(False, ["emsgsize"])
    with pytest.raises(SendError):
        send(engine, kernel, 100_000)
    assert engine.failure is None
    ticket, _ = send(engine, kernel, 100_000)
    engine.apply(kernel.completions())
    assert ticket.done


def test_reap_cadence_comes_from_the_policy() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=False)
    kernel = Kernel(False)
    reaps = 0
    for _ in range(200):
        _, steps = send(engine, kernel, 64 * 1024)
        reaps += steps.count(Step.REAP)
    assert reaps == 200 // 64  # one unit per call + 0 per 64 KiB: every 64 datagrams


@pytest.mark.parametrize("took_known", [True, False])
@pytest.mark.parametrize("at", [0, 2])
def test_interrupt_after_the_kernel_took_a_call(took_known: bool, at: int) -> None:
    """The root cause of the old desync: an exception between a successful call and its
    bookkeeping. The tracker must stay in step with the kernel's counter."""
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=True)
    kernel = Kernel(True)
    ticket = FakeTicket(4 * ZC_CHUNK)
    kernel.send_no = 1
    op = engine.begin(ticket, ticket.nbytes)
    with pytest.raises(Interrupt):
        drive(engine, op, kernel, interrupt_at=at, took_known=took_known)
    assert isinstance(engine.failure, SendError) and "broken" in str(engine.failure)
    assert engine.broken_stream
    assert engine.tracker.sent == kernel.counter  # in step, also when the result was lost
    engine.apply(kernel.completions())  # must not raise InvalidCompletionError
    assert ticket.done and engine.tracker.pending_tokens == 0
    if took_known:
        assert engine.handed == sum(b - a for _, a, b, _ in kernel.pieces)


def test_interrupt_before_any_byte_leaves_the_engine_usable() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=True)
    ticket = FakeTicket(100_000)
    op = engine.begin(ticket, ticket.nbytes)
    assert op.next() is Step.SEND
    assert op.failed(OSError(errno.EAGAIN, "full")) is None
    assert op.next() is Step.WAIT_WRITABLE
    assert op.interrupted(Interrupt(), None) is None  # e.g. cancelled while waiting
    assert engine.failure is None and not engine.broken_stream
    assert ticket.done and not ticket.zerocopy
    second, _ = send(engine, Kernel(True), 100_000)
    assert not second.done


def test_uncertain_zero_copy_call_on_udp_stops_zero_copy_only() -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=False)
    kernel = Kernel(False)
    ticket = FakeTicket(60_000)
    op = engine.begin(ticket, ticket.nbytes)
    assert op.next() is Step.SEND
    kernel.send(op.start, op.end, op.zerocopy)  # it went out; the result is lost
    assert op.interrupted(Interrupt(), None) is None  # no byte stream to break
    assert engine.ctl.mode == "copy" and engine.tracker.uncertain_tail
    engine.apply(kernel.completions())  # the maybe-value proves taken
    assert ticket.done
    plain, _ = send(engine, kernel, 60_000)
    assert plain.done and not plain.zerocopy


# -- property-based ---------------------------------------------------------------------------
EVENTS = st.sampled_from(["ok", "ok", "ok", "partial", "enobufs", "eagain"])


@settings(max_examples=150, deadline=None)
@given(
    stream=st.booleans(),
    force=st.booleans(),
    sizes=st.lists(st.integers(0, 3 * ZC_CHUNK + 7), min_size=1, max_size=6),
    script=st.lists(EVENTS, max_size=40),
    copied=st.booleans(),
    reap_between=st.lists(st.booleans(), min_size=6, max_size=6),
    reverse=st.booleans(),
)
def test_every_byte_once_in_order_and_tracker_in_step(
    stream: bool, force: bool, sizes: list[int], script: list[str], copied: bool,
    reap_between: list[bool], reverse: bool,
) -> None:
    engine: SendEngine[FakeTicket] = SendEngine(SendPolicy(force_zerocopy=force), stream=stream)
    kernel = Kernel(stream, list(script), copied=copied)
    tickets = []
    for k, nbytes in enumerate(sizes):
        ticket, _ = send(engine, kernel, nbytes)
        tickets.append(ticket)
        assert_contiguous(kernel, k + 1, nbytes) if nbytes else None
        if not stream:
            assert all((a, b) == (0, nbytes) for a, b in covered(kernel, k + 1))
        assert engine.tracker.sent == kernel.counter
        if reap_between[k]:
            engine.apply(kernel.completions(reverse))
    engine.apply(kernel.completions(reverse))
    assert all(t.done and t.error is None for t in tickets)
    assert engine.tracker.pending_tokens == 0 and engine.tracker.outstanding == 0
    ctl = engine.ctl
    total = sum(sizes)
    assert engine.handed == total
    assert ctl.bytes_plain + ctl.bytes_zerocopy + ctl.bytes_copied == total
    assert ctl.bytes_pending == 0
    for t in tickets:
        if t.zerocopy:
            assert t.copied is copied


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(20_000, 3 * ZC_CHUNK), min_size=1, max_size=4),
    script=st.lists(EVENTS, max_size=20),
    interrupt_at=st.integers(0, 6),
    took_known=st.booleans(),
)
def test_interrupted_sends_keep_the_tracker_in_step(
    sizes: list[int], script: list[str], interrupt_at: int, took_known: bool,
) -> None:
    engine: SendEngine[FakeTicket] = SendEngine(FORCED, stream=True)
    kernel = Kernel(True, list(script))
    tickets = []
    interrupted = False
    for nbytes in sizes:
        if engine.failure is not None:
            with pytest.raises(SendError):  # the driver checks the engine first
                raise engine.failure
            break
        ticket = FakeTicket(nbytes)
        tickets.append(ticket)
        kernel.send_no += 1
        op = engine.begin(ticket, nbytes)
        try:
            drive(engine, op, kernel, interrupt_at=interrupt_at, took_known=took_known)
        except Interrupt:
            interrupted = True
    # whatever was interrupted, the kernel's counter and the tracker agree on every value
    # the kernel can report, and the completions release exactly the tickets they cover
    engine.apply(kernel.completions())
    assert all(t.done for t in tickets)
    assert engine.tracker.pending_tokens == 0
    if interrupted:
        assert engine.broken_stream and engine.failure is not None
    if took_known:
        assert engine.handed == sum(b - a for _, a, b, _ in kernel.pieces)
