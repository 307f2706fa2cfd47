"""The zero-copy send engine, sans-I/O: one socket's send state and the send of one buffer.

Theory of operation (Documentation/networking/msg_zerocopy.rst; docs/ARCHITECTURE.md, 'Transmit'
and 'Transmit: interrupted sends'). Everything the blocking :class:`zcnet.sender.Sender` and the
asyncio :class:`zcnet.aio.ZcStream` decide about sending lives here, once; they differ only in how
they wait.

* :class:`SendEngine` is one socket's send state: the policy (:class:`TxController`), the
  completion counter (:class:`CompletionTracker`), the bytes handed to the kernel, and whether the
  socket may still send. :meth:`SendEngine.apply` is the one place where error-queue
  notifications finish tickets and feed the policy; :meth:`SendEngine.connection_failed` is the
  one place where a lost connection fails every pending ticket.
* :class:`SendOp` is the send of one buffer, h11 style: :meth:`SendOp.next` says what to do next
  (a :class:`Step`: send ``buffer[op.start:op.end]`` with or without ``MSG_ZEROCOPY``, read the
  error queue, wait for completions up to ``op.wait_seconds``, wait until writable, done) and the
  driver tells it what happened (:meth:`SendOp.sent`, :meth:`SendOp.failed`,
  :meth:`SendOp.interrupted`). It cuts TCP buffers into :data:`ZC_CHUNK` pieces, continues
  partial sends where they stopped, absorbs ``ENOBUFS`` (reap and retry, or copy that piece),
  follows a switch to copy mode in the middle of a buffer, keeps the reap cadence, and finally
  seals the ticket.

Tickets are duck-typed (:class:`TicketLike`): the blocking and the asyncio ticket both have
``zerocopy``, ``error``, ``_finish(copied)`` and ``_fail(error)``.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Hashable, Iterable
from typing import Final, Generic, Protocol, TypeVar

from zcnet._core.tracker import CompletionTracker, ZerocopyCompletion
from zcnet._core.txpolicy import (
    PLAIN_ENOBUFS_ATTEMPTS,
    ZC_CHUNK,
    EnobufsAction,
    SendPolicy,
    TxController,
)
from zcnet.errors import (
    InvalidCompletionError,
    SendError,
    SocketClosedError,
    ZcnetError,
    translate_os_error,
)

__all__ = ["SendEngine", "SendOp", "Step", "TicketLike"]

_RETRY_AFTER_WRITABLE: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


class TicketLike(Hashable, Protocol):
    """What the engine needs from a ticket (``zcnet.sender.Ticket``, ``zcnet.aio.AioTicket``)."""

    zerocopy: bool
    error: ZcnetError | None

    def _finish(self, copied: bool) -> None: ...

    def _fail(self, error: ZcnetError) -> None: ...


T = TypeVar("T", bound=TicketLike)


class Step(enum.IntEnum):
    """What the driver of a :class:`SendOp` does next."""

    #: one send call of ``buffer[op.start:op.end]``, with ``MSG_ZEROCOPY`` if ``op.zerocopy``;
    #: then report :meth:`SendOp.sent` or :meth:`SendOp.failed`
    SEND = 0
    #: read the error queue without waiting (:meth:`SendEngine.apply`), then ask again
    REAP = 1
    #: read the error queue; if it was empty, wait up to ``op.wait_seconds`` for a
    #: notification and read it again; then ask again
    WAIT_COMPLETIONS = 2
    #: wait until the socket is writable (or has an error), then ask again
    WAIT_WRITABLE = 3
    #: every byte is in the kernel: call :meth:`SendEngine.finish`
    DONE = 4


class SendEngine(Generic[T]):
    """The send state of one socket, shared by every send on it.

    Args:
        policy: the knobs.
        stream: TCP (a byte stream: any send failure ends it) or UDP (datagrams: a failure ends
            one datagram).

    Attributes:
        ctl: the policy state and counters.
        tracker: the kernel's zero-copy counter, mapped to tickets.
        failure: once set, every later send raises it (a lost connection, a byte stream cut
            short, a tracker out of step with the kernel).
        broken_stream: a TCP send was cut short after some of its bytes reached the kernel: the
            peer would see a truncated message, so the driver resets the connection on close
            if the peer does not take the rest.
        handed: bytes handed to the kernel by sends of this engine (exact, also after an
            interruption; used to reconcile with the kernel's own count).
    """

    __slots__ = ("_cut_short", "broken_stream", "ctl", "failure", "stream", "tracker")

    def __init__(self, policy: SendPolicy, *, stream: bool) -> None:
        self.ctl = TxController(policy)
        self.tracker: CompletionTracker[T] = CompletionTracker()
        self.stream = stream
        self.failure: ZcnetError | None = None
        self.broken_stream = False
        self._cut_short: ZcnetError | None = None  # the failure an interruption set

    @property
    def handed(self) -> int:
        """Bytes handed to the kernel (kept with the counters, which the compiled send path
        bumps: :attr:`TxController.handed`)."""
        return self.ctl.handed

    @handed.setter
    def handed(self, value: int) -> None:
        self.ctl.handed = value

    @property
    def connection_failure(self) -> ZcnetError | None:
        """:attr:`failure` unless it only says a send was cut short: what waiting for
        completions (``flush``, ``drain``) raises, since the connection itself still works."""
        failure = self.failure
        return None if failure is self._cut_short else failure

    def begin(self, ticket: T, nbytes: int, *, zerocopy: bool | None = None) -> SendOp[T]:
        """The send of ``nbytes`` for ``ticket``; zero-copy if the policy says so (or
        ``zerocopy`` forces the choice)."""
        if zerocopy is None:
            zerocopy = self.ctl.use_zerocopy(nbytes) and nbytes > 0
        ticket.zerocopy = zerocopy
        return SendOp(self, ticket, nbytes, zerocopy)

    # -- completions ---------------------------------------------------------------------------
    def apply(self, events: Iterable[object]) -> int:
        """Apply error-queue events: finish tickets, feed the policy. Returns tickets finished.

        A :class:`ZerocopyCompletion` that no sequence of sends could produce releases nothing;
        the engine then refuses further sends (its counter can no longer be trusted) and the
        first such error is raised after every other event was applied.
        """
        tracker = self.tracker
        ctl = self.ctl
        finished = 0
        invalid: InvalidCompletionError | None = None
        for ev in events:
            if type(ev) is not ZerocopyCompletion:
                ctl.on_other_error()
                continue
            try:
                res = tracker.complete(ev.lo, ev.hi, ev.copied)
            except InvalidCompletionError as e:
                invalid = invalid or e
                continue
            ctl.on_completion(res.calls, res.nbytes, ev.copied)
            for ticket, copied in zip(res.done, res.done_copied, strict=True):
                ticket._finish(copied)
            finished += len(res.done)
        if invalid is not None:
            if self.failure is None:
                self.failure = invalid
            raise invalid
        return finished

    # -- failures ------------------------------------------------------------------------------
    def connection_failed(self, err: ZcnetError) -> None:
        """The connection is gone: refuse later sends and fail every pending ticket.

        A failed ticket still becomes done if the kernel reports its completion later.
        """
        if self.failure is None or self.failure is self._cut_short:
            self.failure = err
        for ticket in self.tracker.tokens():
            ticket._fail(err)

    def translate(self, e: OSError) -> ZcnetError:
        """``e`` as zcnet's error; on TCP (or a closed socket) it also ends the connection."""
        err = translate_os_error(e, "send", stream=self.stream)
        if self.stream or isinstance(err, SocketClosedError):
            self.connection_failed(err)
        return err

    def fail_remaining(self, err: ZcnetError) -> int:
        """The socket is being closed: pending tickets get ``err`` (they never become done: the
        kernel may still read their buffers). Returns how many there were."""
        left = 0
        for ticket in self.tracker.tokens():
            left += 1
            ticket._fail(err)
        return left

    def finish(self, op: SendOp[T]) -> bool | None:
        """Seal ``op``'s ticket (no more calls): ``None`` while completions are outstanding,
        else whether the kernel copied (the ticket is finished then)."""
        ticket = op.ticket
        op.ended = True
        if not op.used_zerocopy:
            ticket.zerocopy = False
        copied = self.tracker.seal(ticket)
        if copied is not None:
            ticket._finish(copied)
        return copied


class SendOp(Generic[T]):
    """The send of one buffer of ``nbytes`` (see the module docstring and :class:`Step`).

    Attributes:
        ticket: the ticket of this send.
        nbytes: the buffer's size.
        off: bytes of the buffer handed to the kernel so far.
        start, end, zerocopy: the piece to send, when :meth:`next` returned ``Step.SEND``.
        wait_seconds: the wait of ``Step.WAIT_COMPLETIONS``.
        used_zerocopy: a zero-copy call carried part of the buffer.
        in_call: a send call was requested and its outcome not reported yet.
        ended: the ticket is sealed (done, failed or interrupted); nothing more to do.
    """

    __slots__ = (
        "_calls", "_chunk", "_copy_until", "_ctl", "_engine", "_next", "_plain_attempts",
        "_tracker", "_use_zc", "end", "ended", "in_call", "nbytes", "off", "start", "ticket",
        "used_zerocopy", "wait_seconds", "zerocopy",
    )

    def __init__(self, engine: SendEngine[T], ticket: T, nbytes: int, zerocopy: bool) -> None:
        self._engine = engine
        self._ctl = engine.ctl
        self._tracker = engine.tracker
        self.ticket = ticket
        self.nbytes = nbytes
        self._use_zc = zerocopy
        # TCP: pieces of ZC_CHUNK; UDP: the datagram is one call, whatever its size
        self._chunk = ZC_CHUNK if engine.stream else max(nbytes, 1)
        self._copy_until = 0  # pieces before this offset go out as copies (ENOBUFS: COPY)
        self._plain_attempts = 0
        self._calls = 0  # successful send calls
        self._next: Step | None = None
        self.off = 0
        self.start = 0
        self.end = 0
        self.zerocopy = False
        self.wait_seconds = 0.0
        self.used_zerocopy = False
        self.in_call = False
        self.ended = False

    def next(self) -> Step:
        """What to do next."""
        step = self._next
        if step is not None:
            self._next = None
            if step is Step.REAP:
                self._ctl.reaped()  # the driver reads the queue now
            return step
        off = self.off
        nbytes = self.nbytes
        if off >= nbytes and self._calls:  # (an empty send is one call too)
            return Step.DONE
        self.start = off
        if self._use_zc and self._ctl.zerocopy and off >= self._copy_until:
            self.zerocopy = True
            self.end = min(off + self._chunk, nbytes)
        else:  # copy mode (or switched to it meanwhile): copy the rest, or the ENOBUFS piece
            self.zerocopy = False
            self.end = self._copy_until if off < self._copy_until else nbytes
        self.in_call = True
        return Step.SEND

    def sent(self, n: int) -> None:
        """The send call of the current piece succeeded with ``n`` bytes."""
        if self.zerocopy:
            # the tracker first: its entry is the only point where an exception can strike
            # before the bookkeeping of a successful call is complete (see record_single)
            self._tracker.record_send(self.ticket, n)
            self.off += n
            self._ctl.handed += n
            self.in_call = False
            self.used_zerocopy = True
            ctl = self._ctl
            ctl.on_zerocopy_sent(n)
            if ctl.reap_due(n):
                self._next = Step.REAP
        else:
            self.off += n
            self._ctl.handed += n
            self.in_call = False
            self._plain_attempts = 0
            self._ctl.on_plain_sent(n)
        self._calls += 1

    def failed(self, e: OSError) -> ZcnetError | None:
        """The send call of the current piece failed with ``e``.

        Returns ``None`` when the operation goes on (ask :meth:`next`), else the error that ends
        it; the driver raises that error (the ticket is sealed and failed, and on TCP the
        connection failure already reached every pending ticket).
        """
        self.in_call = False
        code = e.errno
        if code == errno.EINTR:
            return None
        if code in _RETRY_AFTER_WRITABLE:  # a non-blocking socket, or SO_SNDTIMEO
            self._next = Step.WAIT_WRITABLE
            return None
        ctl = self._ctl
        if code == errno.EOPNOTSUPP and self.zerocopy:
            # the protocol has no zero-copy send (io_uring's SEND_ZC on MPTCP, say: nothing
            # was taken): copy mode for good, and this piece goes out as a copy
            ctl.disable(f"the kernel refused a zero-copy send on this socket ({e.strerror})")
            return None
        if code == errno.ENOBUFS:
            if self.zerocopy:  # notification or locked-memory budget: back-pressure
                if ctl.on_enobufs(self._tracker.outstanding) is EnobufsAction.REAP_AND_RETRY:
                    self.wait_seconds = ctl.enobufs_wait()
                    self._next = Step.WAIT_COMPLETIONS
                else:
                    self._copy_until = self.end
                return None
            if self._plain_attempts < PLAIN_ENOBUFS_ATTEMPTS:  # a full device queue
                self.wait_seconds = ctl.plain_enobufs_wait(self._plain_attempts)
                self._plain_attempts += 1
                self._next = Step.WAIT_COMPLETIONS
                return None
        engine = self._engine
        err = engine.translate(e)
        self._end_with(err, broken=self.off > 0)
        return err

    def interrupted(self, exc: BaseException, kernel_took: int | None) -> ZcnetError | None:
        """An exception that is not a send error (``KeyboardInterrupt``, a signal handler's,
        ``CancelledError``...) stopped the operation; the driver re-raises it afterwards.

        Args:
            exc: the exception.
            kernel_took: if a call was in flight (:attr:`in_call`), the bytes it handed to the
                kernel as the kernel counts them (TCP: ``zcnet.lowlevel.tcpstate``), or ``None``
                when that cannot be known.

        Returns the engine's new failure when the byte stream is now broken (every later send
        raises it), else ``None``.
        """
        engine = self._engine
        uncertain = False
        if self.in_call:
            self.in_call = False
            if kernel_took is not None and kernel_took > 0:
                self.sent(kernel_took)  # the call happened; its result was lost
                self._next = None
            elif kernel_took is None:
                uncertain = True
                if self.zerocopy:
                    # the call may have taken a counter value: stop zero-copy so that the
                    # tracker's last value stays the only doubtful one
                    self._tracker.record_uncertain(self.ticket)
                    self.used_zerocopy = True
                    self._ctl.disable(
                        "a zero-copy send was interrupted before its result was recorded")
        broken = self.off > 0 or uncertain
        what = "cancelled" if type(exc).__name__ == "CancelledError" else "interrupted"
        err: ZcnetError | None = None
        if engine.stream and broken:
            done = "an unknown number" if uncertain else str(self.off)
            err = SendError(
                f"a send was {what} after {done} of its {self.nbytes} bytes reached the kernel "
                f"({type(exc).__name__}): the byte stream is broken")
            err.__cause__ = exc
        self._end_with(err, broken=broken)
        return err

    def _end_with(self, err: ZcnetError | None, *, broken: bool) -> None:
        """Seal the ticket after a failure; mark the stream broken if it is cut short."""
        engine = self._engine
        ticket = self.ticket
        if err is not None and ticket.error is None:
            ticket._fail(err)
        if engine.stream and broken:
            engine.broken_stream = True
            if err is not None and engine.failure is None:  # cut short, connection intact
                engine.failure = engine._cut_short = err
        engine.finish(self)
