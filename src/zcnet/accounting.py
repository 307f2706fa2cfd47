"""Thread-safe memory accounts, with waiting for room, and the kernel's own view of memory.

Theory of operation: :class:`Account` is the pure :class:`zcnet._core.accounting.Account` with
one re-entrant lock per account *tree* (every account created under a root shares the root's
lock, so an all-or-nothing charge up the hierarchy is atomic). ``charge(..., block=True)`` waits
on a :class:`threading.Condition` of that lock until an uncharge or a raised limit makes room,
the way a sender waits for ``sk_stream_wait_memory`` (net/core/stream.c) rather than failing.

The kernel's side of the ledger (``SO_MEMINFO``, ``/proc/net/sockstat``, the memory cgroup's
socket charge) is read by :mod:`zcnet.lowlevel.meminfo`; :func:`kernel_memory_snapshot` is
re-exported here so that both views live behind one import.

:func:`send_accounted` and :func:`recv_accounted` charge what a ``zcnet.sender.Sender`` pins
(until the ticket's completion, Documentation/networking/msg_zerocopy.rst) and what a
``zcnet.receiver.Receiver`` maps (until the chunk is released; no kernel charges these pages
to a memory cgroup).

Waiting for room is done in one place, :class:`Waiter`, which both :func:`send_accounted` and
:meth:`zcnet.pool.BufferPool.acquire` use. A Sender reads its completions only when called, in
the thread that uses it, so whoever waits for the room those completions free must reap them
itself: the waiter calls ``poll()`` on the Senders it is given and sleeps in ``poll(2)`` on their
sockets (a queued completion raises ``POLLERR``, net/ipv4/tcp.c ``tcp_poll``) and on an
``eventfd`` that other threads signal (an uncharge or a limit change in a watched account tree,
a buffer returned to a pool). No periodic re-check, no busy loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from zcnet._core import accounting as _core
from zcnet._core.accounting import (
    KINDS,
    MAPPED,
    PINNED,
    POOL,
    AccountStats,
    Charge,
)
from zcnet.errors import (
    AccountingError,
    ConcurrentUseError,
    LimitWaitTimeout,
    SocketClosedError,
)
from zcnet.lowlevel.meminfo import (
    CgroupSockMemory,
    KernelMemorySnapshot,
    MemInfo,
    SockStat,
    kernel_memory_snapshot,
)

__all__ = [
    "KINDS",
    "MAPPED",
    "PINNED",
    "POOL",
    "Account",
    "AccountStats",
    "AccountedChunk",
    "AccountingError",
    "CgroupSockMemory",
    "Charge",
    "KernelMemorySnapshot",
    "LimitWaitTimeout",
    "MemInfo",
    "SockStat",
    "Waiter",
    "kernel_memory_snapshot",
    "recv_accounted",
    "send_accounted",
]


_BACKOFF_MAX = 0.05  # seconds: the longest sleep while a socket keeps reporting nothing to reap


class _Reapable(Protocol):
    """What :class:`Waiter` needs of a ``zcnet.sender.Sender``."""

    def poll(self) -> int: ...
    def fileno(self) -> int: ...


class Waiter:
    """Sleeps until something that may make room happens; zcnet's one way of waiting for room.

    It wakes when :meth:`set` is called (from any thread), when an account tree it watches
    (:meth:`Account.waking`) uncharges bytes or changes a limit, and when a completion arrives
    on one of the Senders it reaps (see :meth:`wait`). Use it as a context manager (it owns an
    ``eventfd``); one thread waits on it at a time.
    """

    __slots__ = ("_fd", "_lock")

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()  # set() never writes to a closed (maybe reused) fd

    def set(self) -> None:
        """Wake the waiting thread (or make its next sleep return at once)."""
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(BlockingIOError):  # the counter is full: set anyway
                    os.eventfd_write(self._fd, 1)

    def close(self) -> None:
        """Close the eventfd (idempotent)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)

    def wait(
        self, ready: Callable[[], bool], deadline: float | None,
        senders: Callable[[], Iterable[_Reapable]] = tuple,
    ) -> bool:
        """Reap, test ``ready()``, sleep; repeat until ``ready()`` is true or ``deadline`` passes.

        Each round calls ``poll()`` on every Sender that ``senders()`` returns (it must be called
        only from the thread that uses those Senders: a Sender is not thread-safe), then
        ``ready()``; then it sleeps in ``poll(2)`` on this waiter's eventfd and the Senders'
        sockets. A Sender that is closed (:class:`SocketClosedError`) or busy in another thread
        (:class:`ConcurrentUseError`) is skipped; other errors of ``poll()`` and of ``ready()``
        propagate. A socket that keeps waking the sleep without completing anything (a hang-up
        or a pending socket error: ``POLLHUP``/``POLLERR`` cannot be masked) is not slept on;
        the waiter then re-reaps at growing intervals, up to 50 ms, instead of spinning.

        Args:
            ready: true when the wait is over; called at least once, even past ``deadline``.
            deadline: a ``time.monotonic()`` value, or ``None`` to wait without bound.
            senders: the Senders to reap, asked again each round.

        Returns:
            True when ``ready()`` returned true, False when ``deadline`` passed first.
        """
        idle = 0  # rounds in a row woken by a socket that then had nothing to reap
        woke_by_socket = False
        while True:
            live: list[_Reapable] = []
            completed = 0
            for sender in senders():
                try:
                    completed += sender.poll()
                except (SocketClosedError, ConcurrentUseError):
                    continue  # closed: nothing more completes; busy: its own thread reaps it
                live.append(sender)
            if ready():
                return True
            idle = idle + 1 if (woke_by_socket and not completed) else 0
            ms = -1
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                ms = max(1, math.ceil(remaining * 1000))
            p = select.poll()
            p.register(self._fd, select.POLLIN)
            if idle:
                back = math.ceil(min(0.0005 * (1 << min(idle, 7)), _BACKOFF_MAX) * 1000)
                ms = back if ms < 0 else min(ms, back)
            else:
                for sender in live:
                    p.register(sender.fileno(), 0)  # POLLERR: a completion is queued
            events = p.poll(ms)
            woke_by_socket = any(fd != self._fd for fd, _ in events)
            self._clear()


class _Tree:
    __slots__ = ("cond", "waiters")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.waiters: set[Waiter] = set()

    def notify(self) -> None:
        """Wake every waiter; call with ``cond`` held."""
        self.cond.notify_all()
        for w in self.waiters:
            w.set()


class Account(_core.Account):
    """A thread-safe accounting node; see :class:`zcnet._core.accounting.Account`.

    All accounts of one tree share one lock. ``charge`` can wait for room (``block=True``).
    """

    __slots__ = ("_tree",)
    _tree: _Tree

    def __init__(self, name: str, limit: int | None = None, parent: Account | None = None) -> None:
        if parent is not None and not isinstance(parent, Account):
            raise TypeError("the parent of a zcnet.accounting.Account must be one too")
        self._tree = parent._tree if parent is not None else _Tree()
        with self._tree.cond:
            super().__init__(name, limit, parent)

    @property
    def children(self) -> tuple[Account, ...]:
        """Direct children, in creation order."""
        with self._tree.cond:
            return tuple(c for c in self._children if isinstance(c, Account))

    def set_limit(self, limit: int | None) -> None:
        """Change the limit and wake waiters (a higher limit may make room)."""
        with self._tree.cond:
            super().set_limit(limit)
            self._tree.notify()

    def usage(self, kind: str | None = None) -> int:
        """Hierarchical bytes of ``kind`` (or of all kinds) charged here and below."""
        with self._tree.cond:
            return super().usage(kind)

    def local_usage(self, kind: str | None = None) -> int:
        """Bytes of ``kind`` (or all kinds) charged to this account itself."""
        with self._tree.cond:
            return super().local_usage(kind)

    def headroom(self) -> int | None:
        """Bytes that could still be charged here before some limit is hit (``None``: no limit)."""
        with self._tree.cond:
            return super().headroom()

    def snapshot(self) -> AccountStats:
        """A consistent frozen snapshot of this account and its subtree."""
        with self._tree.cond:
            return super().snapshot()

    def try_charge(self, nbytes: int, kind: str) -> bool:
        """Charge if no limit up the tree would be exceeded; all or nothing."""
        with self._tree.cond:
            return super().try_charge(nbytes, kind)

    def charge(
        self, nbytes: int, kind: str, *, block: bool = False, timeout: float | None = None
    ) -> Charge:
        """Charge ``nbytes`` of ``kind`` and return a handle that uncharges it.

        Args:
            block: wait for room instead of failing at once.
            timeout: with ``block``, seconds to wait at most (``None``: forever).

        Raises:
            LimitExceeded: no room (``block=False``), or ``nbytes`` alone exceeds some limit
                on the path to the root (it could never fit).
            LimitWaitTimeout: ``block=True`` and no room came within ``timeout``
                (a :class:`LimitExceeded` and a :class:`zcnet.errors.TimeoutExpired`).
        """
        cond = self._tree.cond
        with cond:
            if super().try_charge(nbytes, kind):
                return Charge(self, nbytes, kind)
            if not block:
                raise self._limit_error(nbytes, kind)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if self._never_fits(nbytes):
                    raise self._limit_error(nbytes, kind)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    base = self._limit_error(nbytes, kind)
                    raise LimitWaitTimeout(f"timed out after {timeout} s waiting: {base}",
                                           account=base.account, limit=base.limit)
                cond.wait(remaining)
                if super().try_charge(nbytes, kind):
                    return Charge(self, nbytes, kind)

    @contextlib.contextmanager
    def waking(self, waiter: Waiter) -> Iterator[Waiter]:
        """While inside, every uncharge or limit change in this account's tree sets ``waiter``."""
        tree = self._tree
        with tree.cond:
            tree.waiters.add(waiter)
        try:
            yield waiter
        finally:
            with tree.cond:
                tree.waiters.discard(waiter)

    def _never_fits(self, nbytes: int) -> bool:
        return any(a.limit is not None and nbytes > a.limit for a in self._lineage())

    def uncharge(self, nbytes: int, kind: str) -> None:
        """Give back bytes charged here and wake waiters; see the pure version."""
        with self._tree.cond:
            super().uncharge(nbytes, kind)
            self._tree.notify()

    def move(self, nbytes: int, from_kind: str, to_kind: str) -> None:
        """Re-label bytes charged here from one kind to another; totals are unchanged."""
        with self._tree.cond:
            super().move(nbytes, from_kind, to_kind)

    def _release_charge(self, handle: Charge) -> None:
        with self._tree.cond:
            super()._release_charge(handle)

    def _move_charge(self, handle: Charge, kind: str) -> None:
        with self._tree.cond:
            super()._move_charge(handle, kind)

    def _shrink_charge(self, handle: Charge, nbytes: int) -> None:
        with self._tree.cond:
            super()._shrink_charge(handle, nbytes)


# -- charging what the Sender pins and the Receiver maps ----------------------------------------


class _TicketLike(Protocol):
    done: bool

    def add_done_callback(self, fn: Callable[[Any], None], /) -> None: ...


class _SenderLike(Protocol):
    def send(self, buf: Any, /) -> Any: ...


class _ChunkLike(Protocol):
    mapped: bool

    def __len__(self) -> int: ...
    def release(self) -> None: ...


class _ReceiverLike(Protocol):
    def recv(self, max_bytes: int, timeout: float | None = None) -> Any: ...


def send_accounted(
    sender: _SenderLike, buf: Any, account: Account, *, block: bool = True,
    timeout: float | None = None,
) -> Any:
    """``sender.send(buf)`` with its bytes charged as ``"pinned"`` until its ticket is done.

    The charge is taken *before* sending, so an account limit bounds the bytes the kernel holds
    pinned. With ``block``, while there is no room it reaps the sender's completions
    (``sender.poll()``, sleeping in ``poll(2)`` for ``POLLERR`` on its socket): completions are
    what free room, and a Sender only reads them in its own thread. A ticket that is done at
    once (a copying send) is uncharged at once. Not for pool leases:
    :meth:`zcnet.pool.Lease.release_when_done` already moves their bytes to ``"pinned"``.

    Raises:
        LimitExceeded: no room (``block=False``), or ``buf`` is larger than a limit.
        LimitWaitTimeout: no room within ``timeout``.
    """
    nbytes = memoryview(buf).nbytes
    charge = _charge_reaping(sender, account, nbytes, block, timeout)
    try:
        ticket: _TicketLike = sender.send(buf)
    except BaseException:
        charge.release()
        raise
    ticket.add_done_callback(lambda _t: charge.release())
    return ticket


def _charge_reaping(
    sender: _SenderLike, account: Account, nbytes: int, block: bool, timeout: float | None
) -> Charge:
    if not block:
        return account.charge(nbytes, PINNED)
    if account.try_charge(nbytes, PINNED):
        return Charge(account, nbytes, PINNED)
    reap: tuple[Any, ...] = (sender,) if hasattr(sender, "poll") and hasattr(sender, "fileno") \
        else ()

    def ready() -> bool:
        if account._never_fits(nbytes):
            raise account._limit_error(nbytes, PINNED)
        return account.try_charge(nbytes, PINNED)

    deadline = None if timeout is None else time.monotonic() + timeout
    with Waiter() as waiter, account.waking(waiter):
        if waiter.wait(ready, deadline, lambda: reap):
            return Charge(account, nbytes, PINNED)
    base = account._limit_error(nbytes, PINNED)
    raise LimitWaitTimeout(f"timed out after {timeout} s waiting: {base}",
                           account=base.account, limit=base.limit)


class AccountedChunk:
    """A received chunk and the ``"mapped"`` charge it holds; release both together."""

    __slots__ = ("charge", "chunk")

    def __init__(self, chunk: Any, charge: Charge | None) -> None:
        self.chunk = chunk
        self.charge = charge

    @property
    def view(self) -> memoryview:
        """The chunk's read-only view."""
        view: memoryview = self.chunk.view
        return view

    @property
    def mapped(self) -> bool:
        """True when the chunk's pages are mapped (and charged)."""
        return bool(self.chunk.mapped)

    def __len__(self) -> int:
        return len(self.chunk)

    def release(self) -> None:
        """Release the chunk, then its charge (idempotent)."""
        self.chunk.release()
        if self.charge is not None:
            self.charge.release()

    def __enter__(self) -> AccountedChunk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def recv_accounted(
    receiver: _ReceiverLike, account: Account, max_bytes: int, *, timeout: float | None = None,
    block: bool = True, wait_timeout: float | None = None,
) -> AccountedChunk:
    """``receiver.recv(max_bytes, timeout)`` with mapped bytes charged as ``"mapped"``.

    ``max_bytes`` is reserved first (waiting up to ``wait_timeout`` for room when ``block``),
    then shrunk to the bytes actually mapped (nothing is kept for a copied chunk). The charge
    lasts until the returned chunk is released.
    """
    charge = account.charge(max_bytes, MAPPED, block=block, timeout=wait_timeout)
    try:
        chunk: _ChunkLike = receiver.recv(max_bytes, timeout)
    except BaseException:
        charge.release()
        raise
    if chunk.mapped and len(chunk):
        charge.shrink(len(chunk))
        return AccountedChunk(chunk, charge)
    charge.release()
    return AccountedChunk(chunk, None)
