"""Completion tracker for ``MSG_ZEROCOPY`` sends (pure logic, no I/O).

Theory of operation (Documentation/networking/msg_zerocopy.rst, net/core/skbuff.c
``msg_zerocopy_realloc`` / ``__msg_zerocopy_callback``): each *successful* zero-copy send call
takes the next value of a per-socket u32 counter; a call that fails takes none. The kernel later
queues notifications on the socket error queue, each an inclusive range ``[lo, hi]`` of counter
values whose buffers it no longer references; consecutive ranges are coalesced, and the range can
wrap past ``2**32 - 1``. This tracker mirrors the counter: :meth:`CompletionTracker.record_send`
hands out the value each successful call took, :meth:`CompletionTracker.complete` consumes a
notification.

Internally values are *unwrapped* into sequence numbers (0, 1, 2, ... in send order). A range is
mapped back into the last ``min(sent, 2**31)`` sequence numbers; a range that reaches past the
last value sent, or is wider than ``2**31``, cannot be a real notification and raises
:class:`~zcnet.errors.InvalidCompletionError` before anything is released. Outstanding sequence
numbers are kept as a sorted list of disjoint half-open intervals (usually one), so a notification
costs ``O(log intervals + completed)``: repeated and already-completed parts of a range cost
nothing beyond the interval search, out-of-order completions split an interval.

Each send call belongs to a *token* (the I/O layer's ticket). One token may span several calls
(partial sends of one buffer); it is finished once :meth:`CompletionTracker.seal` said no more calls
will follow and every call it made has completed. The common case, a token made of exactly one
call, has a cheaper entry point, :meth:`CompletionTracker.record_single`, and a batch of such
tokens (one ``sendmmsg(2)`` of zero-copy datagrams, each a full ``udp_sendmsg`` taking the next
value) is recorded at once with :meth:`CompletionTracker.record_batch`.

Two implementations: this module's :class:`PyCompletionTracker` is the reference, and
``zcnet._speedups.CompletionTracker`` (src/zcnet/_ext/tracker.c) has the same API and semantics;
:data:`CompletionTracker` is the compiled one when the extension is active (``zcnet._accel``).
The compiled send path (txfast.c) records and completes through it without running Python code
(docs/ARCHITECTURE.md, 'Compiled fast path').
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Generic, TypeVar

from zcnet._accel import speedups
from zcnet._core.serial import HALF, MASK, distance, range_width
from zcnet.errors import InvalidCompletionError

__all__ = ["Completion", "CompletionTracker", "PyCompletionTracker", "ZerocopyCompletion"]

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True, slots=True)
class ZerocopyCompletion:
    """The kernel released the zero-copy send calls ``lo .. hi`` (inclusive, u32, may wrap).

    What one error-queue notification says (``zcnet.lowlevel.errqueue`` parses it).
    """

    lo: int
    hi: int
    copied: bool


@dataclass(frozen=True, slots=True)
class Completion(Generic[T]):
    """What one notification released.

    Attributes:
        calls: send calls newly completed (repeats of completed calls are not counted).
        nbytes: bytes carried by those calls.
        copied: the notification said the kernel copied the data after all.
        done: tokens that became finished with this notification, in send order.
        done_copied: for each token in ``done``, whether any of its calls was reported copied.
    """

    calls: int
    nbytes: int
    copied: bool
    done: tuple[T, ...]
    done_copied: tuple[bool, ...]


class _TokenState:
    __slots__ = ("copied", "remaining", "sealed")

    def __init__(self) -> None:
        self.remaining = 0
        self.sealed = False
        self.copied = False


class CompletionTracker(Generic[T]):
    """Maps the kernel's wrapping zero-copy counter to tokens and finishes them on notification.

    Args:
        start: the counter value the kernel gives the next successful zero-copy call (0 on a
            fresh socket; tests start near ``2**32`` to exercise wraparound).
    """

    __slots__ = (
        "_ends", "_n", "_owner", "_singles", "_start", "_starts", "_tokens", "uncertain_tail",
    )

    def __init__(self, start: int = 0) -> None:
        if not 0 <= start <= MASK:
            raise ValueError(f"start must be a u32, got {start}")
        self._start = start
        self._n = 0  # sequence numbers handed out so far
        self._starts: list[int] = []  # outstanding sequence numbers: [starts[k], ends[k])
        self._ends: list[int] = []
        # seq -> (token, nbytes, state); state None: a single-call token (record_single)
        self._owner: dict[int, tuple[T, int, _TokenState | None]] = {}
        self._tokens: dict[T, _TokenState] = {}  # multi-call tokens not finished
        self._singles = 0  # single-call tokens outstanding
        #: the last value may or may not have been taken (see :meth:`record_uncertain`)
        self.uncertain_tail = False

    # -- queries ---------------------------------------------------------------------------
    @property
    def next_value(self) -> int:
        """The counter value the next :meth:`record_send` returns."""
        return (self._start + self._n) & MASK

    @property
    def sent(self) -> int:
        """Successful zero-copy send calls recorded so far."""
        return self._n

    @property
    def outstanding(self) -> int:
        """Send calls not yet completed."""
        return len(self._owner)

    @property
    def pending_tokens(self) -> int:
        """Tokens not yet finished (open, or sealed with calls outstanding)."""
        return len(self._tokens) + self._singles

    def tokens(self) -> Iterator[T]:
        """The unfinished tokens (those with outstanding calls in send order, then open ones)."""
        seen: dict[T, None] = {}
        for token, _, _ in self._owner.values():
            seen.setdefault(token)
        for token in self._tokens:
            seen.setdefault(token)
        return iter(list(seen))

    def is_outstanding(self, value: int) -> bool:
        """Whether the call that took counter ``value`` is still outstanding (most recent use)."""
        if self._n == 0:
            return False
        back = distance(value, (self._start + self._n - 1) & MASK)
        if back >= min(self._n, HALF):
            return False
        return (self._n - 1 - back) in self._owner

    # -- updates ---------------------------------------------------------------------------
    def record_send(self, token: T, nbytes: int) -> int:
        """Record one successful zero-copy send call of ``nbytes`` for ``token``.

        Returns the counter value the kernel gave that call.
        """
        if self.uncertain_tail:
            self._refuse_after_uncertain()
        seq = self._n
        self._n = seq + 1
        ends = self._ends
        if ends and ends[-1] == seq:
            ends[-1] = seq + 1
        else:
            self._starts.append(seq)
            ends.append(seq + 1)
        state = self._tokens.get(token)
        if state is None:
            state = self._tokens[token] = _TokenState()
        elif state.sealed:
            raise ValueError("record_send() on a sealed token")
        state.remaining += 1
        self._owner[seq] = (token, nbytes, state)
        return (self._start + seq) & MASK

    def record_uncertain(self, token: T) -> int:
        """Record a call of ``token`` that may or may not have taken a counter value.

        An exception (a signal handler's, say) that interrupts the I/O layer between the
        system call and its bookkeeping loses the call's result: if the call succeeded, the
        kernel's counter moved and the tracker's did not. Recording the value as *maybe taken*
        keeps both in step as long as no other call follows, so the tracker refuses later
        ``record_*`` calls (the I/O layer stops zero-copy sends first). A notification that
        covers the value proves the call happened; if none ever does, ``token`` stays
        unfinished. Returns the value.
        """
        value = self.record_send(token, 0)
        self.uncertain_tail = True
        return value

    @staticmethod
    def _refuse_after_uncertain() -> None:
        raise ValueError("no send call may be recorded after an uncertain one")

    def record_single(self, token: T, nbytes: int) -> int:
        """Record a successful call that is the whole of ``token`` (recorded and sealed at once).

        Equivalent to ``record_send(token, nbytes)`` then ``seal(token)``, only cheaper; ``token``
        must not have been used before. Returns the counter value the kernel gave that call.

        Its common case (the call extends the last interval) makes no call of its own, so an
        asynchronous exception (a signal handler's) can only strike at its entry, before any
        change; the I/O layer relies on that (docs/ARCHITECTURE.md, 'Transmit: interrupted sends').
        """
        if self.uncertain_tail:
            self._refuse_after_uncertain()
        seq = self._n
        self._n = seq + 1
        ends = self._ends
        if ends and ends[-1] == seq:
            ends[-1] = seq + 1
        else:
            self._starts.append(seq)
            ends.append(seq + 1)
        self._owner[seq] = (token, nbytes, None)
        self._singles += 1
        return (self._start + seq) & MASK

    def record_batch(self, tokens: Sequence[T], sizes: Sequence[int]) -> int:
        """Record ``len(tokens)`` successful calls, each the whole of its own new token.

        The bookkeeping of one ``sendmmsg(2)`` that sent that many zero-copy datagrams (each one a
        full ``udp_sendmsg`` that took the next counter value): equivalent to
        ``record_single(tokens[i], sizes[i])`` for each ``i`` in order. Returns the counter value
        of the first call (the next one if ``tokens`` is empty).
        """
        if self.uncertain_tail:
            self._refuse_after_uncertain()
        k = len(tokens)
        if k != len(sizes):
            raise ValueError(f"{k} tokens but {len(sizes)} sizes")
        seq = self._n
        first = (self._start + seq) & MASK
        if not k:
            return first
        self._n = seq + k
        ends = self._ends
        if ends and ends[-1] == seq:
            ends[-1] = seq + k
        else:
            self._starts.append(seq)
            ends.append(seq + k)
        self._owner.update(zip(range(seq, seq + k), zip(tokens, sizes, repeat(None)), strict=False))
        self._singles += k
        return first

    def seal(self, token: T) -> bool | None:
        """Declare that ``token`` makes no more send calls.

        Returns ``None`` while some of its calls are outstanding (it will appear in a later
        :attr:`Completion.done`), otherwise whether the kernel copied any of its calls (``False``
        as well for a token that never made a zero-copy call).
        """
        state = self._tokens.get(token)
        if state is None:
            return False
        state.sealed = True
        if state.remaining:
            return None
        del self._tokens[token]
        return state.copied

    def _resolve(self, lo: int, hi: int) -> tuple[int, int]:
        """Map a u32 range to inclusive sequence numbers, or raise InvalidCompletionError."""
        if not (0 <= lo <= MASK and 0 <= hi <= MASK):
            raise InvalidCompletionError(f"completion range [{lo}, {hi}] is not made of u32 values")
        width = range_width(lo, hi)
        if width > HALF:
            raise InvalidCompletionError(
                f"completion range [{lo}, {hi}] is {width} values wide (more than 2**31)"
            )
        n = self._n
        if n == 0:
            raise InvalidCompletionError(
                f"completion range [{lo}, {hi}] but no zero-copy send was made"
            )
        last = (self._start + n - 1) & MASK
        back_hi = distance(hi, last)  # how far hi lies behind the last value sent
        if back_hi + width > min(n, HALF):
            raise InvalidCompletionError(
                f"completion range [{lo}, {hi}] reaches beyond the {n} zero-copy sends made "
                f"(values {self._start} .. {last})"
            )
        seq_hi = n - 1 - back_hi
        return seq_hi - width + 1, seq_hi

    def complete(self, lo: int, hi: int, copied: bool) -> Completion[T]:
        """Apply the notification for the inclusive, possibly wrapping counter range ``[lo, hi]``.

        Ranges may be coalesced, repeated or out of order. Raises
        :class:`~zcnet.errors.InvalidCompletionError` (releasing nothing) for a range that no
        sequence of sends could produce.
        """
        seq_lo, seq_hi = self._resolve(lo, hi)
        starts, ends = self._starts, self._ends
        k0 = bisect_right(ends, seq_lo)  # first interval ending after seq_lo
        k1 = k0
        new_starts: list[int] = []
        new_ends: list[int] = []
        pop = self._owner.pop
        tokens = self._tokens
        calls = 0
        nbytes = 0
        singles = 0
        done: list[T] = []
        done_copied: list[bool] = []
        add_done = done.append
        add_copied = done_copied.append
        while k1 < len(starts) and starts[k1] <= seq_hi:
            s, e = starts[k1], ends[k1]
            a, b = max(s, seq_lo), min(e, seq_hi + 1)
            if s < a:
                new_starts.append(s)
                new_ends.append(a)
            if b < e:
                new_starts.append(b)
                new_ends.append(e)
            calls += b - a
            for seq in range(a, b):
                token, size, state = pop(seq)
                nbytes += size
                if state is None:
                    singles += 1
                    add_done(token)
                    add_copied(copied)
                    continue
                state.remaining -= 1
                if copied:
                    state.copied = True
                if not state.remaining and state.sealed:
                    del tokens[token]
                    add_done(token)
                    add_copied(state.copied)
            k1 += 1
        self._singles -= singles
        if k1 > k0:
            starts[k0:k1] = new_starts
            ends[k0:k1] = new_ends
        return Completion(calls, nbytes, copied, tuple(done), tuple(done_copied))


#: The pure-Python tracker, the reference implementation.
PyCompletionTracker = CompletionTracker
if speedups is not None and not TYPE_CHECKING:
    CompletionTracker = speedups.CompletionTracker  # same API (src/zcnet/_ext/tracker.c)
