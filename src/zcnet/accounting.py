"""Thread-safe memory accounts, with waiting for room, and the kernel's own view of memory.

Theory of operation: :class:`Account` is the pure :class:`zcnet._core.accounting.Account` with
one re-entrant lock per account *tree* (every account created under a root shares the root's
lock, so an all-or-nothing charge up the hierarchy is atomic). ``charge(..., block=True)`` waits
on a :class:`threading.Condition` of that lock until an uncharge or a raised limit makes room,
the way a sender waits for ``sk_stream_wait_memory`` (net/core/stream.c) rather than failing.

The kernel's side of the ledger (``SO_MEMINFO``, ``/proc/net/sockstat``, the memory cgroup's
socket charge) is read by :mod:`zcnet.lowlevel.meminfo`; :func:`kernel_memory_snapshot` is
re-exported here so that both views live behind one import.
"""

from __future__ import annotations

import threading
import time

from zcnet._core import accounting as _core
from zcnet._core.accounting import (
    KINDS,
    MAPPED,
    PINNED,
    POOL,
    AccountingError,
    AccountStats,
    Charge,
)
from zcnet.errors import LimitExceeded, TimeoutExpired
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
    "AccountingError",
    "CgroupSockMemory",
    "Charge",
    "KernelMemorySnapshot",
    "LimitWaitTimeout",
    "MemInfo",
    "SockStat",
    "kernel_memory_snapshot",
]


class LimitWaitTimeout(LimitExceeded, TimeoutExpired):
    """A blocking charge waited past its timeout for room under a limit."""


class _Tree:
    __slots__ = ("cond",)

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())


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
            self._tree.cond.notify_all()

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
                    raise LimitWaitTimeout(f"timed out after {timeout} s waiting: {base}")
                cond.wait(remaining)
                if super().try_charge(nbytes, kind):
                    return Charge(self, nbytes, kind)

    def _never_fits(self, nbytes: int) -> bool:
        return any(a.limit is not None and nbytes > a.limit for a in self._lineage())

    def uncharge(self, nbytes: int, kind: str) -> None:
        """Give back bytes charged here and wake waiters; see the pure version."""
        with self._tree.cond:
            super().uncharge(nbytes, kind)
            self._tree.cond.notify_all()

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
