"""Page-aligned buffer pools for zero-copy sends: slabs, size classes, per-thread free lists.

Theory of operation:

- **Slabs.** Buffers are carved from large anonymous ``mmap`` slabs (default 4 MiB), each
  aligned to 2 MiB and marked ``madvise(MADV_HUGEPAGE)`` (Documentation/admin-guide/mm/
  transhuge.rst): with THP in "madvise" mode a fault in an aligned 2 MiB range can be served by one
  huge page, so filling a buffer takes 1 fault instead of 512 and ``MSG_ZEROCOPY`` pinning
  (``get_user_pages`` in net/core/datagram.c ``zerocopy_fill_skb_from_iter``) walks fewer page
  tables. The kernel does not align anonymous mappings to 2 MiB here, so a slab maps 2 MiB more
  address space than it uses and starts at the first aligned address (the slack is never touched,
  so it costs no memory). ``scripts/pool_bench.py --thp`` measures the fill cost both ways
  (here typically 4-5x less CPU per GiB first touched, with occasional compaction stalls; see
  docs/memory.md); ``hugepages=False`` opts out.
- **Size classes.** Powers of two from 4 KiB to ``max_size``; every buffer is page aligned, as
  zero-copy wants (pages are pinned whole). A slab serves one class, carved lazily.
- **Leases.** ``acquire(size)`` returns a :class:`Lease` whose ``view`` is a writable memoryview of
  exactly ``size`` bytes. ``release()`` calls ``memoryview.release()`` on that view, so a view kept
  by mistake raises ``ValueError`` instead of scribbling on a buffer now owned by someone else. A
  lease handed to ``Sender.send`` returns to the pool only when its ticket completes
  (:meth:`Lease.release_when_done`).
- **Exports.** ``release()`` is refused while anything else still uses the lease's memory. That
  takes more than ``memoryview.release()``: it fails only for exports taken *from the view
  object* (``PickleBuffer(view)``, ``memoryview(lease)`` through PEP 688), whereas
  ``memoryview(view)``, slices, ``ctypes.c_char.from_buffer(view)`` and ``numpy.frombuffer(view)``
  register on the view's *managed buffer* (Objects/memoryobject.c ``mbuf_add_view``), shared by
  every view derived from one exporter.
- **Compiled implementation** (``zcnet._speedups``, docs/ARCHITECTURE.md 'Compiled fast path').
  A :class:`Lease` is a ``LeaseBase`` (a ``BufferBase``) over its block: a writable buffer on
  every Python version that counts its own exports and holds an export of the slab's mmap until
  it is finalized (so ``close()`` cannot unmap a slab under a lease or an export of one). Its view
  is ``memoryview(lease)``, made on first use. ``_speedups.claim_lease`` (:func:`_py_claim` in
  C) reads the lease's exports, the view's managed buffer's count of live views and the view's
  own exports exactly, and if only the view uses the memory releases it and ends the lease, in
  one step. The leases in flight are kept in a :class:`zcnet._core.flight.FlightBook` (its C
  twin when compiled), and a compiled ticket lands the lease it carries without a callback. A
  thread's free lists are a ``_speedups.ThreadCache``, and ``_speedups.PoolCore`` runs
  :meth:`BufferPool.acquire` from this thread's list and a release or landing onto the owner's
  list in C, handing everything else to the Python methods below.
- **Pure Python** (the reference). Each block gets a managed buffer of its own (a
  memoryview of a ``pickle.PickleBuffer`` of the block, whose exports go to that block alone), and
  a release first reads that managed buffer's count of live views, which must be exactly the
  block's own view plus the lease's view. The count (the ``exports`` field of CPython's
  ``_PyManagedBufferObject``) is read through ctypes at an offset found by experiment when the
  module is imported; if the experiment fails, the managed buffer's reference count is used
  instead, which also counts released views that are still referenced (safe, but it refuses a
  release while such a dead view is around).
- **Held back.** In both, a completion that arrives while an export is alive holds its lease
  back (out of the pool, logged) until a later acquire (or ``close``) finds the export gone.
- **Waiting for a buffer.** When no buffer of the class is free and the account has no room for
  a slab, ``acquire(size, timeout)`` first takes idle buffers back from other threads' lists,
  then waits, with :class:`zcnet.accounting.Waiter` (the mechanism of
  :func:`zcnet.accounting.send_accounted`): it reaps the completions of the Senders whose tickets
  this thread passed to :meth:`Lease.release_when_done` (a Sender is read only by the thread that
  uses it) and sleeps in ``poll(2)`` until one completes, another thread returns a buffer (while
  anyone waits, returns go to the shared list and wake the waiters) or the account gets room.
- **Per-thread free lists and deferred return** (after net/core/skbuff.c
  ``skb_attempt_defer_free``: an skb freed on a CPU other than the one that allocated it is queued
  to the owner CPU's defer list and freed there in bulk). :class:`BufferPool` keeps a free list
  per thread; a lease released on its owner thread goes straight back to it; released on another
  thread it is appended to the owner's deferred deque (``deque.append``/``popleft`` are atomic in
  CPython), and the owner drains that deque in bulk (at most ``drain_batch``) on its next acquire.
  If the owner thread is gone (a weak reference to a sentinel kept only in the owner's
  ``threading.local`` is dead), or its deferred queue is over a bound, blocks go to a shared list
  under the pool lock instead. The hot path (acquire and owner release with a non-empty list)
  takes no shared lock. A thread that finds the account full may take idle blocks from other
  threads' lists and deferred queues, under the pool lock (``list.pop``/``deque.popleft`` are
  atomic; owners spill under the lock). :class:`LockedFreeListPool` is the baseline: one list per
  class, one lock.
- **Accounting.** With ``account=``, each slab is charged as ``"pool"`` bytes when mapped and
  uncharged when the pool closes. A lease in flight moves its bytes ``"pool"`` -> ``"pinned"``
  and back on completion: each byte is charged once (see :mod:`zcnet._core.accounting`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import logging
import math
import mmap
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from zcnet._accel import speedups
from zcnet._core.accounting import PINNED, POOL
from zcnet._core.flight import HELD as _HELD
from zcnet._core.flight import IN_FLIGHT as _IN_FLIGHT
from zcnet._core.flight import LEASED as _LEASED
from zcnet._core.flight import MIN_CLASS
from zcnet._core.flight import RELEASED as _RELEASED
from zcnet._core.flight import FlightBook as _PyFlightBook
from zcnet.accounting import Account, Waiter
from zcnet.errors import BufferLifetimeError, LimitExceeded, LimitWaitTimeout, PoolError

__all__ = [
    "BufferPool",
    "Lease",
    "LockedFreeListPool",
    "PoolStats",
    "TicketLike",
]

PAGE: Final = mmap.PAGESIZE
HUGE: Final = 2 * 1024 * 1024

_log = logging.getLogger(__name__)


class TicketLike(Protocol):
    """What :meth:`Lease.release_when_done` needs of a ``zcnet.sender.Ticket``."""

    def add_done_callback(self, fn: Callable[[Any], None], /) -> None: ...


class _AccountLike(Protocol):
    def charge(self, nbytes: int, kind: str) -> Any: ...
    def move(self, nbytes: int, from_kind: str, to_kind: str) -> None: ...


def _reaper_of(ticket: object) -> Any:
    """The Sender whose completions finish ``ticket``, if a waiting acquire may reap it.

    ``zcnet.sender.Ticket.sender`` is its Sender while pending; asyncio tickets complete on
    their event loop and have none.
    """
    sender = getattr(ticket, "sender", None)
    if sender is None or not (hasattr(sender, "poll") and hasattr(sender, "fileno")):
        return None
    return sender


def _running_loop() -> object | None:
    """The asyncio loop running in this thread, if any (asyncio is not imported for this)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None
    try:
        loop: object = aio.get_running_loop()
    except RuntimeError:
        return None
    return loop


#: Seconds between re-checks, in a default acquire, of whether a lease in flight can come back.
_RETURNS_RECHECK: Final = 1.0


def _check_timeout(timeout: float) -> None:
    if not timeout >= 0:  # also NaN
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unavailable"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "unavailable"


def _probe_exports_offset() -> int | None:
    """Where CPython keeps a managed buffer's count of live views, or None if not found.

    ``_PyManagedBufferObject`` is ``PyObject_HEAD; int flags; Py_ssize_t exports; ...``
    (Objects/memoryobject.c); the header's size differs between builds, so the offset is found
    by watching which word follows the number of live (not released) views.
    """
    base = memoryview(pickle.PickleBuffer(bytearray(64)))
    refs = gc.get_referents(base)
    if len(refs) != 1 or type(refs[0]).__name__ != "managedbuffer":
        return None
    mbuf = refs[0]
    for off in range(ctypes.sizeof(ctypes.c_void_p), 64, ctypes.sizeof(ctypes.c_ssize_t)):
        cell = ctypes.c_ssize_t.from_address(id(mbuf) + off)
        if cell.value != 1:
            continue
        views = [base[:] for _ in range(3)]
        ok = cell.value == 4
        views[0].release()  # released but still referenced: no longer counted
        ok = ok and cell.value == 3
        del views
        if ok and cell.value == 1:
            return off
    return None


#: The compiled ``end_lease`` (zcnet/_ext/views.c), or None in the pure-Python implementation.
_end_lease: Final[Callable[[Any, memoryview | None], bool] | None] = (
    None if speedups is None else speedups.end_lease)
#: The pure-Python implementation's probe; the compiled one reads the counters in C.
_EXPORTS_AT: Final = _probe_exports_offset() if _end_lease is None else None


class _Slab:
    __slots__ = ("address", "blocks", "class_size", "huge", "mm", "next_off", "size", "start",
                 "view")

    def __init__(self, size: int, class_size: int, hugepages: bool) -> None:
        aligned = hugepages and size >= HUGE
        self.mm = mmap.mmap(-1, size + (HUGE if aligned else 0),
                            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchor = ctypes.c_char.from_buffer(self.mm)
        base = ctypes.addressof(anchor)
        del anchor
        off = (-base) % HUGE if aligned else 0
        self.address = base + off
        self.start = off  # offset of the slab's first (aligned) byte in ``mm``
        self.huge = False
        if aligned and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self.mm.madvise(mmap.MADV_HUGEPAGE, off, size)
                self.huge = True
            except OSError:
                pass
        self.view = memoryview(self.mm)[off:off + size]
        self.size = size
        self.class_size = class_size
        self.next_off = 0
        self.blocks: list[_Block] = []

    def close(self) -> bool:
        """Unmap; False if some view into the slab is still exported.

        With the extension every lease not yet finalized holds an export of ``mm`` (BufferBase),
        so ``mm.close()`` refuses while any lease or export of one is alive.
        """
        for block in self.blocks:
            block.close()
        self.view.release()
        try:
            self.mm.close()
        except BufferError:
            return False
        return True


class _Block:
    """One buffer of a slab; in the pure-Python implementation with a managed buffer of its own
    that counts who uses it (the compiled Lease counts its exports itself)."""

    __slots__ = ("cell", "cls", "full", "idle_refs", "mbuf", "offset", "slab", "start")

    def __init__(self, slab: _Slab, offset: int, cls: int, size: int) -> None:
        self.slab = slab
        self.offset = offset
        self.start = slab.start + offset  # offset in ``slab.mm``
        self.cls = cls
        self.full: memoryview | None = None
        self.mbuf: object = None
        self.cell: ctypes.c_ssize_t | None = None
        self.idle_refs = 0
        if _end_lease is not None:
            return
        # memoryview(PickleBuffer(x)) makes a new managed buffer whose master is an export of
        # x: every view derived from ``full`` (leases' views and whatever is made from them)
        # registers there, and only there.
        self.full = memoryview(pickle.PickleBuffer(slab.view[offset:offset + size]))
        refs = gc.get_referents(self.full)
        self.mbuf = refs[0] if len(refs) == 1 else None
        del refs  # the baseline below must count only ``full`` and ``self.mbuf``
        if _EXPORTS_AT is not None and self.mbuf is not None:
            self.cell = ctypes.c_ssize_t.from_address(id(self.mbuf) + _EXPORTS_AT)
        self.idle_refs = sys.getrefcount(self.mbuf)  # ``full`` and our own reference

    def shared(self) -> bool:
        """True if views other than ``full`` and one lease's view use this block."""
        cell = self.cell
        if cell is not None:
            return cell.value > 2
        if self.mbuf is None:  # pragma: no cover - not CPython's memoryview
            return False
        return sys.getrefcount(self.mbuf) > self.idle_refs + 1

    def close(self) -> None:
        self.cell = None
        self.mbuf = None
        if self.full is not None:
            self.full.release()

    def end_lease(self, lease: Lease) -> bool:
        """Pure-Python implementation of ``_speedups.end_lease``: release ``lease``'s view
        unless its memory is still used (True), or change nothing (False)."""
        if self.shared():  # views derived from the lease's view
            return False
        view = lease._view
        assert view is not None
        try:
            view.release()  # refused while an export taken from the view object is alive
        except BufferError:
            return False
        return True


class _Token:
    __slots__ = ("__weakref__",)


class _ThreadCache:
    """One thread's free lists and deferred-return queue (owner-written counters); the
    compiled implementation's is ``zcnet._speedups.ThreadCache``."""

    __slots__ = ("acquires", "cross_releases", "deferred", "drained", "free", "name",
                 "releases", "token_ref")

    def __init__(self, nclasses: int, token: _Token, name: str) -> None:
        self.free: list[list[_Block]] = [[] for _ in range(nclasses)]
        self.deferred: collections.deque[_Block] = collections.deque()
        self.token_ref = weakref.ref(token)
        self.name = name
        self.acquires = 0
        self.releases = 0
        self.cross_releases = 0
        self.drained = 0

    def alive(self) -> bool:
        return self.token_ref() is not None


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool (exact when no thread is acquiring or releasing)."""

    kind: str
    slabs: int
    slab_bytes: int
    hugepage_slabs: int
    outstanding: int
    in_flight: int
    idle_blocks: int
    acquires: int
    releases: int
    cross_thread_releases: int
    deferred_drained: int
    reclaimed_from_dead_threads: int
    threads: int
    held_back: int = 0


if TYPE_CHECKING:
    _LeaseBase = object
else:
    # Compiled: a Lease is a buffer over its block (zcnet/_ext/buffer.c) on every Python
    # version; its exports are counted exactly and it holds an export of the slab's mmap while
    # it lives (so close() cannot unmap under it). Its fields, state and claim are C fields
    # (zcnet/_ext/lease.c).
    _LeaseBase = object if speedups is None else speedups.LeaseBase
#: Compiled: a new Lease without __init__ (new_lease(Lease, pool, block, size, owner)).
_new_lease: Final[Any] = None if speedups is None else speedups.new_lease
#: A thread's free lists (compiled: the C twin, whose owner the C landing recognises).
_ThreadCacheImpl: Final[Any] = _ThreadCache if speedups is None else speedups.ThreadCache
#: A pool's book of its leases in flight (zcnet._core.flight).
_FlightBook: Final[Any] = _PyFlightBook if speedups is None else speedups.FlightBook


class Lease(_LeaseBase):
    """A buffer borrowed from a pool; release it exactly once (or use ``with``).

    With the compiled extension the lease is a writable buffer itself on every Python version
    (``bytes(lease)``, ``memoryview(lease)``, ``numpy.frombuffer(lease)``,
    ``sock.recv_into(lease)``); in the pure-Python implementation from Python 3.12 on (PEP 688).
    ``zcnet.implementation()`` says which one is active; :attr:`view` works everywhere.
    """

    # compiled: the fields are the C base's, and so is the weak-reference slot
    __slots__ = () if speedups is not None else (
        "__weakref__", "_block", "_claim", "_owner", "_pool", "_reaper", "_size", "_state",
        "_view")

    _pool: _PoolBase
    _block: _Block
    _size: int
    _owner: _ThreadCache | None
    _state: int
    _claim: list[bool]  # pure Python: list.pop is atomic, exactly one releaser wins
    _reaper: tuple[int, int] | None  # (thread, Sender) to reap while in flight
    # compiled: made on first use (memoryview(self)); Python: a view of the block's own managed
    # buffer (see _Block)
    _view: memoryview | None

    def __new__(cls, pool: _PoolBase, block: _Block, size: int,
                owner: _ThreadCache | None) -> Self:
        if _new_lease is not None:
            lease: Self = _new_lease(cls, pool, block, size, owner)
            return lease
        self = object.__new__(cls)
        self._pool = pool
        self._block = block
        self._size = size
        self._owner = owner
        self._state = _LEASED
        self._claim = [True]
        self._reaper = None
        self._view = None if block.full is None else block.full[:size]
        return self

    @property
    def view(self) -> memoryview:
        """A writable memoryview of exactly ``size`` bytes; raises after release.

        The same object every time; it does not count against :meth:`release` (what is made
        from it does), and the pool releases it on return, so a reference kept by mistake then
        raises ``ValueError``.
        """
        if self._state == _RELEASED:
            raise BufferLifetimeError("this lease was released; its buffer belongs to the pool")
        view = self._view
        if view is None:
            view = self._view = memoryview(self)  # type: ignore[arg-type, unused-ignore]
        return view

    @property
    def size(self) -> int:
        """Bytes requested (the length of ``view``)."""
        return self._size

    @property
    def capacity(self) -> int:
        """Bytes of the size class the buffer came from."""
        return self._pool._classes[self._block.cls]

    @property
    def address(self) -> int:
        """Virtual address of the buffer (page aligned)."""
        return self._block.slab.address + self._block.offset

    @property
    def in_flight(self) -> bool:
        """True between :meth:`release_when_done` and the ticket's completion."""
        return self._state == _IN_FLIGHT

    @property
    def released(self) -> bool:
        """True once the buffer is back in the pool."""
        return self._state == _RELEASED

    @property
    def held_back(self) -> bool:
        """True when its ticket completed while an export of its memory was still alive.

        The pool takes it back by itself once that export is gone (on a later acquire that
        finds no free buffer, or at ``close``).
        """
        return self._state == _HELD

    def release(self) -> None:
        """Give the buffer back.

        Refused, with nothing changed, while anything else still uses the buffer's memory:
        another memoryview made from :attr:`view` (``memoryview(view)``, a slice, a cast), an
        object built on it through the buffer protocol (``numpy.frombuffer``,
        ``ctypes.c_char.from_buffer``, ``pickle.PickleBuffer``) or an export of the lease itself
        (``memoryview(lease)``, ``numpy.frombuffer(lease)``: with the extension, or on Python
        3.12+). Release or drop that object, then release again. Copies (``bytes(view)``,
        ``view.tobytes()``, ``bytes(lease)``) do not count. After release, :attr:`view` and new
        exports of the lease raise :class:`BufferLifetimeError`.

        Raises:
            BufferLifetimeError: released twice, in flight (its ticket releases it), held back
                (see :attr:`held_back`), or its memory is still exported as above.
        """
        self._pool.release(self)

    def release_when_done(self, ticket: TicketLike) -> None:
        """Return the buffer to the pool when ``ticket`` (from ``Sender.send``) is done.

        Until then the lease is in flight: its bytes are accounted as ``"pinned"`` and it cannot
        be released by hand. The callback may run on any thread (deferred return). Call it from
        the thread that uses the Sender: a waiting :meth:`BufferPool.acquire` in this thread then
        reaps that Sender's completions. If the ticket completes while an export of the buffer is
        still alive, the lease is held back (:attr:`held_back`) instead of returning to the pool.
        """
        self._pool._begin_flights((self,), (ticket,))

    def _on_done(self, _ticket: object) -> None:
        self._pool._end_flight(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state == _LEASED:
            self.release()

    def __len__(self) -> int:
        return self._size

    if sys.version_info >= (3, 12) and speedups is None:
        # PEP 688 (Python 3.12+): the lease is a buffer itself (memoryview(lease), f.readinto,
        # sock.recv_into, numpy); on 3.11 use lease.view. The export is taken from the lease's
        # view, so release() is refused while any consumer still holds it. (The compiled base
        # class exports the block itself.)
        def __buffer__(self, flags: int, /) -> memoryview:
            """The lease's writable view (PEP 688); :class:`BufferLifetimeError` after release."""
            return self.view

        # Defined so that the type has a releasebuffer slot: a consumer such as
        # numpy.frombuffer(lease) then keeps a buffer export (a memoryview) instead of a bare
        # pointer and a reference to the lease, so release() sees it. Nothing to do here: the
        # interpreter drops its export of the view after this call.
        def __release_buffer__(self, view: memoryview, /) -> None:
            """PEP 688: an export of the lease ended (the view stays the lease's)."""

    def __repr__(self) -> str:
        state = ("leased", "in flight", "released", "held back")[self._state]
        return f"<Lease {self._size}/{self.capacity} bytes at {self.address:#x} ({state})>"


def _py_claim(lease: Lease, from_flight: bool = False) -> None:
    """Take the right to return ``lease`` (exactly once) and kill its view (the reference of
    ``zcnet._speedups.claim_lease``).

    Raises :class:`BufferLifetimeError`, with nothing changed, if the lease is not simply
    leased (unless ``from_flight``) or its memory is still exported.
    """
    state = lease._state
    if state != _LEASED and not from_flight:
        if state == _IN_FLIGHT:
            raise BufferLifetimeError(
                f"{lease!r} is in flight; it returns to the pool when its ticket is done")
        if state == _HELD:
            raise BufferLifetimeError(
                f"{lease!r} was handed to release_when_done; it returns to the pool by "
                "itself once the export of its memory is gone")
    claim = lease._claim
    try:
        claim.pop()
    except IndexError:
        raise BufferLifetimeError(f"{lease!r} was released twice") from None
    # Views derived from its view and exports of the view, counted by the block's managed
    # buffer (_Block); the compiled claim_lease counts them exactly in C (zcnet/_ext/views.c).
    if not lease._block.end_lease(lease):
        claim.append(True)
        raise BufferLifetimeError(
            f"{lease!r} is still in use: a memoryview, array or other object made from it or "
            "its view is alive; release or drop it first")
    lease._state = _RELEASED


class _PoolBase:
    """Slabs, size classes, accounting and lease checks shared by both pools."""

    _kind: str = "base"

    def __init__(
        self,
        *,
        max_size: int = 4 * 1024 * 1024,
        slab_bytes: int = 4 * 1024 * 1024,
        account: _AccountLike | None = None,
        hugepages: bool = True,
    ) -> None:
        if max_size < MIN_CLASS or max_size & (max_size - 1):
            raise ValueError(f"max_size must be a power of two >= {MIN_CLASS}, got {max_size}")
        if slab_bytes < PAGE or slab_bytes % PAGE:
            raise ValueError(f"slab_bytes must be a positive multiple of {PAGE}")
        self._classes: list[int] = []
        c = MIN_CLASS
        while c <= max_size:
            self._classes.append(c)
            c *= 2
        self._max_size = max_size
        self._slab_bytes = slab_bytes
        self._account = account
        self._hugepages = hugepages and _thp_mode() in ("always", "madvise")
        self._lock = threading.Lock()
        self._shared: list[list[_Block]] = [[] for _ in self._classes]
        self._current: list[_Slab | None] = [None] * len(self._classes)
        self._slabs: list[_Slab] = []
        self._charges: list[Any] = []
        self._closed = False
        self._waiters: set[Waiter] = set()  # threads in a waiting acquire; returns wake them
        self._held: list[Lease] = []  # completed while exported (see Lease.held_back)
        self._book = _FlightBook(self._lock)  # the leases in flight (zcnet._core.flight)
        self._core: Any = None  # BufferPool: its common cases in C (speedups.PoolCore)

    @property
    def size_classes(self) -> tuple[int, ...]:
        """The buffer sizes the pool hands out (powers of two)."""
        return tuple(self._classes)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _class_index(self, size: int) -> int:
        if size.__class__ is int and MIN_CLASS < size <= self._max_size:
            return (size - 1).bit_length() - 12
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size < 0 or size > self._max_size:
            raise PoolError(f"size {size} is outside this pool's range 0..{self._max_size}")
        return max(0, (size - 1).bit_length() - 12) if size > MIN_CLASS else 0

    def _carve(self, cls: int, n: int) -> list[_Block]:
        """Cut up to ``n`` new blocks of class ``cls``; call with the lock held."""
        if self._closed:
            raise PoolError("the pool is closed")
        size = self._classes[cls]
        out: list[_Block] = []
        while len(out) < n:
            slab = self._current[cls]
            if slab is None or slab.next_off + size > slab.size:
                if out:
                    break
                slab = self._new_slab(cls)
            block = _Block(slab, slab.next_off, cls, size)
            slab.blocks.append(block)
            out.append(block)
            slab.next_off += size
        return out

    def _new_slab(self, cls: int) -> _Slab:
        size = max(self._slab_bytes, self._classes[cls])
        size -= size % self._classes[cls]
        charge = self._account.charge(size, POOL) if self._account is not None else None
        try:
            slab = _Slab(size, self._classes[cls], self._hugepages)
        except BaseException:
            if charge is not None:
                charge.release()
            raise
        self._slabs.append(slab)
        self._charges.append(charge)
        self._current[cls] = slab
        return slab

    def _mapped_slabs(self) -> list[_Slab]:
        """The slabs mapped so far (for registering them with an io_uring ring)."""
        with self._lock:
            if self._closed:
                raise PoolError("the pool is closed")
            return list(self._slabs)

    # -- lease lifetime ---------------------------------------------------------------------
    def _check_mine(self, lease: Lease) -> None:
        if not isinstance(lease, Lease):
            raise PoolError(f"expected a Lease, got {type(lease).__name__}")
        if lease._pool is not self:
            raise PoolError(f"{lease!r} belongs to another pool; release it to the pool that "
                            "handed it out")

    def _take_back(self, lease: Lease) -> None:
        """Check ownership, then claim ``lease``."""
        if type(lease) is not Lease or lease._pool is not self:
            self._check_mine(lease)
        self._claim(lease)

    #: Take the right to return a lease (exactly once) and kill its view:
    #: ``_claim(lease, from_flight=False)``; see :func:`_py_claim`.
    _claim = staticmethod(_py_claim if speedups is None else speedups.claim_lease)

    def release(self, lease: Lease) -> None:
        """Return ``lease`` to this pool; see :meth:`Lease.release`."""
        raise NotImplementedError

    def _begin_flights(self, leases: Sequence[Lease], tickets: Sequence[TicketLike]) -> None:
        """:meth:`Lease.release_when_done` of ``leases[i]`` with ``tickets[i]``, for a batch at
        once (one account move; the tickets share one Sender). Every lease is checked first: if
        one cannot go in flight, nothing changes and it raises."""
        if len(leases) != len(tickets):
            raise ValueError(f"{len(leases)} leases for {len(tickets)} tickets")
        book = self._book
        capacity = book.check(self, leases)
        if self._account is not None:
            self._account.move(capacity, POOL, PINNED)
        sender = _reaper_of(tickets[0]) if tickets else None
        key = None if sender is None else (threading.get_ident(), id(sender))
        book.take_off(leases, tickets, key, sender)

    def _end_flight(self, lease: Lease) -> None:
        """The ticket of ``lease`` is done: the lease comes back (or is held back while an
        export of its memory is alive)."""
        self._book.land(lease)
        if self._account is not None:
            self._account.move(lease.capacity, PINNED, POOL)
        try:
            self._claim(lease, True)
        except BufferLifetimeError:
            self._hold_back(lease)
            return
        self._return(lease)

    def _hold_back(self, lease: Lease) -> None:
        """The kernel is done with ``lease`` but the program still holds a view of its buffer:
        handing it out again would let that view write into the next lease, so it stays out of
        the pool until the view is gone (:attr:`Lease.held_back`)."""
        lease._state = _HELD
        with self._lock:
            self._held.append(lease)
        _log.warning("%r completed while a view of its memory is alive; it stays out of the "
                     "pool until that view is released", lease)

    def _reclaim_held(self) -> None:
        """Return the held-back leases whose exports are gone (call without the lock)."""
        with self._lock:
            held, self._held = self._held, []
        kept: list[Lease] = []
        for lease in held:
            try:
                self._claim(lease, True)
            except BufferLifetimeError:
                kept.append(lease)
                continue
            self._return(lease)
        if kept:
            with self._lock:
                self._held.extend(kept)

    def _return(self, lease: Lease) -> None:
        raise NotImplementedError

    # -- waiting for a buffer ---------------------------------------------------------------
    def _take_free(self, cls: int) -> _Block | None:
        """A free block of class ``cls`` from anywhere in the pool, or a new one if the account
        has room; None if neither. Raises :class:`PoolError` once the pool is closed."""
        raise NotImplementedError

    def _wait_for_block(self, cls: int, timeout: float | None, err: LimitExceeded) -> _Block:
        """The slow path of ``acquire``: no free block and no room for a slab (``err``).

        Takes back held leases and reaps this thread's Senders once; then, given a
        ``timeout``, waits (:class:`zcnet.accounting.Waiter`) until a block is free, the account
        has room, or the time is up.
        """
        size = max(self._slab_bytes, self._classes[cls])
        if err.limit is not None and size > err.limit and self._current[cls] is None:
            raise err  # no slab of this class can ever be mapped: nothing will come back
        found: list[_Block] = []

        def ready() -> bool:
            if self._held:
                self._reclaim_held()
            block = self._take_free(cls)
            if block is None:
                return False
            found.append(block)
            return True

        me = threading.get_ident()

        def senders() -> list[Any]:
            with self._lock:
                entries = list(self._book.reapers.items())  # one step: the book changes
            return [e[0] for k, e in entries if k[0] == me]

        # timeout=None waits only while returns are on their way: leases in flight whose
        # tickets have not failed come back by completions (this thread reaps its own Senders'
        # meanwhile); otherwise nothing can come back by itself, and waiting could deadlock
        # (the caller may hold every lease), so it fails at once as it always did.
        for_returns = timeout is None
        gave_up: list[bool] = []

        def ready_or_nothing_on_its_way() -> bool:
            if ready():
                return True
            if not self._returns_on_their_way():
                gave_up.append(True)
                return True
            return False

        if for_returns:
            deadline: float | None = time.monotonic()
        elif timeout is not None and timeout > 0:
            deadline = None if math.isinf(timeout) else time.monotonic() + timeout
        else:
            deadline = time.monotonic()
        account = self._account
        with contextlib.ExitStack() as stack:
            waiter = stack.enter_context(Waiter())
            stack.enter_context(self._waiting(waiter))
            if isinstance(account, Account):
                stack.enter_context(account.waking(waiter))
            if for_returns:
                # rounds of at most a second: a ticket that fails wakes nobody, so whether a
                # return is still on its way is asked again now and then
                while not waiter.wait(ready_or_nothing_on_its_way, deadline, senders):
                    deadline = time.monotonic() + _RETURNS_RECHECK
                if found:
                    return found[0]
            elif waiter.wait(ready, deadline, senders):
                return found[0]
        if for_returns:
            raise err
        raise LimitWaitTimeout(
            f"no {self._classes[cls]}-byte buffer came free within {timeout} s: {err}",
            account=err.account, limit=err.limit)

    def _returns_on_their_way(self) -> bool:
        """Whether a lease in flight can come back while this thread waits: its ticket has not
        failed (one that failed, e.g. closed with the kernel still holding its buffer, may never
        be done), and it is not completed by an event loop running in this very thread (an
        ``AioTicket``'s completions are reaped by its loop, which cannot run while we block)."""
        running = _running_loop()
        with self._lock:
            tickets = list(self._book.flying.values())  # one step: the book changes
        return any(getattr(t, "error", None) is None
                   and (running is None or getattr(t, "_loop", None) is not running)
                   for t in tickets)

    @contextlib.contextmanager
    def _waiting(self, waiter: Waiter) -> Iterator[None]:
        """While inside, returns go to the shared lists and set ``waiter``."""
        with self._lock:
            self._waiters.add(waiter)
        try:
            yield
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def _wake_waiters(self) -> None:
        """Call with the lock held."""
        for w in self._waiters:
            w.set()

    # -- shutdown -------------------------------------------------------------------------
    def _outstanding(self) -> int:
        raise NotImplementedError

    def close(self, *, force: bool = False) -> None:
        """Unmap all slabs and uncharge the account.

        Raises:
            PoolError: leases are still out (or in flight) and ``force`` is false.
            BufferLifetimeError: some view into a slab is still exported (slab left mapped).
        """
        if self._closed:
            return
        if self._held:
            self._reclaim_held()
        with self._lock:
            out = self._outstanding()
            if self._book.in_flight:
                raise PoolError(f"{self._book.in_flight} leases are still in flight; flush the "
                                "sender before closing the pool")
            if out and not force:
                held = f" ({len(self._held)} held back: an export of their memory is alive)" \
                    if self._held else ""
                raise PoolError(f"{out} leases are still out{held}; release them before closing")
            self._closed = True
            if self._core is not None:
                self._core.closed = True  # its acquire reads this flag, not the attribute
            self._wake_waiters()
            self._shared = [[] for _ in self._classes]
            self._current = [None] * len(self._classes)
            slabs, self._slabs = self._slabs, []
            charges, self._charges = self._charges, []
        stuck = sum(0 if s.close() else 1 for s in slabs)
        for ch in charges:
            if ch is not None:
                ch.release()
        if stuck:
            raise BufferLifetimeError(f"{stuck} slabs stay mapped: views into them are alive")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LockedFreeListPool(_PoolBase):
    """The baseline pool: one free list per size class behind one lock.

    Same API as :class:`BufferPool`; every acquire and release takes the lock.
    """

    _kind = "locked"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._acquires = 0
        self._releases = 0

    def acquire(self, size: int, timeout: float | None = None) -> Lease:
        """Borrow a page-aligned buffer of ``size`` bytes; see :meth:`BufferPool.acquire`."""
        cls = self._class_index(size)
        if timeout is not None:
            _check_timeout(timeout)
        if self._held:
            self._reclaim_held()
        with self._lock:
            if self._closed:
                raise PoolError("the pool is closed")
            fl = self._shared[cls]
            err: LimitExceeded | None = None
            try:
                block = fl.pop() if fl else self._carve(cls, 1)[0]
            except LimitExceeded as e:
                err = e
            else:
                self._acquires += 1
        if err is not None:
            block = self._wait_for_block(cls, timeout, err)
            with self._lock:
                self._acquires += 1
        return Lease(self, block, size, None)

    def _take_free(self, cls: int) -> _Block | None:
        with self._lock:
            if self._closed:
                raise PoolError("the pool is closed")
            fl = self._shared[cls]
            if fl:
                return fl.pop()
            try:
                return self._carve(cls, 1)[0]
            except LimitExceeded:
                return None

    def release(self, lease: Lease) -> None:
        """Return ``lease`` to this pool; see :meth:`Lease.release`."""
        self._take_back(lease)
        self._return(lease)

    def _return(self, lease: Lease) -> None:
        with self._lock:
            self._shared[lease._block.cls].append(lease._block)
            self._releases += 1
            if self._waiters:
                self._wake_waiters()

    def _outstanding(self) -> int:
        return self._acquires - self._releases

    def stats(self) -> PoolStats:
        """A snapshot of the pool."""
        with self._lock:
            return PoolStats(
                kind=self._kind, slabs=len(self._slabs),
                slab_bytes=sum(s.size for s in self._slabs),
                hugepage_slabs=sum(s.huge for s in self._slabs),
                outstanding=self._acquires - self._releases, in_flight=self._book.in_flight,
                idle_blocks=sum(len(x) for x in self._shared), acquires=self._acquires,
                releases=self._releases, cross_thread_releases=0, deferred_drained=0,
                reclaimed_from_dead_threads=0, threads=0, held_back=len(self._held),
            )


class BufferPool(_PoolBase):
    """A pool with per-thread free lists and deferred cross-thread return.

    Args:
        max_size: the largest size class (a power of two).
        slab_bytes: bytes per slab (a larger class gets a slab of its own size).
        account: charge slab memory to this account (``"pool"``; ``"pinned"`` while in flight).
        hugepages: align slabs to 2 MiB and ask for transparent huge pages.
        thread_cache_bytes: idle bytes per class a thread keeps before spilling to the shared list.
        drain_batch: the most deferred returns an owner takes back per acquire.
        deferred_limit: above this many queued deferred returns, releasers spill to the shared list.
    """

    _kind = "per-thread"

    def __init__(
        self,
        *,
        max_size: int = 4 * 1024 * 1024,
        slab_bytes: int = 4 * 1024 * 1024,
        account: _AccountLike | None = None,
        hugepages: bool = True,
        thread_cache_bytes: int = 8 * 1024 * 1024,
        drain_batch: int = 256,
        deferred_limit: int = 4096,
    ) -> None:
        super().__init__(max_size=max_size, slab_bytes=slab_bytes, account=account,
                         hugepages=hugepages)
        self._local = threading.local()
        self._caches: list[_ThreadCache] = []
        self._cap = [max(2, thread_cache_bytes // c) for c in self._classes]
        self._drain_batch = max(1, drain_batch)
        self._deferred_limit = max(1, deferred_limit)
        self._dead = [0, 0, 0, 0]  # acquires, releases, cross, drained of reclaimed caches
        self._reclaimed = 0
        if speedups is not None:
            # acquire from this thread's list, and a release or a lease's landing onto its
            # owner's list, in C; whatever else, in the Python methods below
            self._core = speedups.PoolCore(
                self, Lease, self._local, self._book, self._account, self._waiters, self._cap,
                self._max_size, BufferPool.acquire, BufferPool.release, block_type=_Block,
                slab_type=_Slab, lock=self._lock, shared=self._shared)
            if type(self).acquire is BufferPool.acquire:  # not overridden by a subclass
                self.__dict__["acquire"] = self._core.acquire
            if type(self).release is BufferPool.release:
                self.__dict__["release"] = self._core.release

    # -- per-thread state -------------------------------------------------------------------
    def _cache(self) -> _ThreadCache:
        cache: _ThreadCache | None = getattr(self._local, "cache", None)
        if cache is None:
            token = _Token()
            cache = _ThreadCacheImpl(len(self._classes), token, threading.current_thread().name)
            self._local.token = token  # only the thread-local holds it: dies with the thread
            self._local.cache = cache
            with self._lock:
                self._caches.append(cache)
        return cache

    def _drain(self, cache: _ThreadCache) -> None:
        dq, free = cache.deferred, cache.free
        n = 0
        for _ in range(min(len(dq), self._drain_batch)):
            try:
                block = dq.popleft()
            except IndexError:
                break
            free[block.cls].append(block)
            n += 1
        cache.drained += n
        cache.releases += n
        for cls, fl in enumerate(free):
            if len(fl) > self._cap[cls]:
                self._spill(fl, cls)

    def _spill(self, fl: list[_Block], cls: int) -> None:
        keep = self._cap[cls] // 2
        with self._lock:  # both steps under the lock: a waiting thread may pop from ``fl``
            self._shared[cls].extend(fl[keep:])
            del fl[keep:]

    def _refill(self, cache: _ThreadCache, cls: int, timeout: float | None) -> _Block:
        if self._held:
            self._reclaim_held()
            try:
                return cache.free[cls].pop()
            except IndexError:
                pass
        err: LimitExceeded | None = None
        with self._lock:
            if self._closed:
                raise PoolError("the pool is closed")
            self._sweep_dead()
            shared = self._shared[cls]
            take = max(1, min(64, self._cap[cls] // 4))
            got: list[_Block] = []
            if shared:
                got = shared[-take:]
                del shared[-take:]
            else:
                try:
                    got = self._carve(cls, take)
                except LimitExceeded as e:
                    err = e
        if err is not None:
            return self._wait_for_block(cls, timeout, err)
        block = got.pop()
        cache.free[cls].extend(got)
        return block

    def _take_free(self, cls: int) -> _Block | None:
        cache = self._cache()
        if cache.deferred:
            self._drain(cache)
        try:
            return cache.free[cls].pop()
        except IndexError:
            pass
        with self._lock:
            if self._closed:
                raise PoolError("the pool is closed")
            self._sweep_dead()
            shared = self._shared[cls]
            if not shared:
                self._steal(cls, cache)
            if shared:
                return shared.pop()
            try:
                return self._carve(cls, 1)[0]
            except LimitExceeded:
                return None

    def _steal(self, cls: int, mine: _ThreadCache) -> None:
        """Move idle blocks of other live threads to the shared lists; call with the lock held.

        Their owners may be idle for ever, and the account has no room for a new slab.
        """
        for c in self._caches:
            if c is mine:
                continue
            fl = c.free[cls]
            while True:  # the owner may pop concurrently: pop until empty, never by index
                try:
                    self._shared[cls].append(fl.pop())
                except IndexError:
                    break
            while True:
                try:
                    block = c.deferred.popleft()
                except IndexError:
                    break
                self._shared[block.cls].append(block)
                self._dead[1] += 1  # counted as released here, no longer by its queue

    def _sweep_dead(self) -> None:
        """Reclaim the lists of threads that have exited; call with the lock held."""
        dead = [c for c in self._caches if not c.alive()]
        for c in dead:
            self._caches.remove(c)
            self._dead[0] += c.acquires
            self._dead[1] += c.releases
            self._dead[2] += c.cross_releases
            self._dead[3] += c.drained
            for cls, fl in enumerate(c.free):
                self._shared[cls].extend(fl)
                fl.clear()
            self._take_deferred(c)

    def _take_deferred(self, c: _ThreadCache) -> None:
        """Move ``c``'s deferred returns to the shared lists; call with the lock held."""
        while True:
            try:
                block = c.deferred.popleft()
            except IndexError:
                return
            self._shared[block.cls].append(block)
            self._reclaimed += 1
            self._dead[1] += 1

    # -- public API -------------------------------------------------------------------------
    def acquire(self, size: int, timeout: float | None = None) -> Lease:
        """Borrow a page-aligned buffer of ``size`` bytes (no shared lock on the fast path).

        A buffer comes from this thread's free list, else the shared list, else a new slab. When
        a new slab would go over the account's limit, the pool first takes idle buffers of this
        size class back from other threads, takes back held-back leases whose exports are gone
        and reaps, once and without sleeping, the completions of the Senders whose tickets this
        thread passed to :meth:`Lease.release_when_done`. If that frees nothing:

        * ``timeout=None`` (the default) waits as long as leases are in flight (passed to
          :meth:`Lease.release_when_done` or ``Sender.send``) with tickets that have not
          failed: their returns are on their way, so an acquire never fails just because a
          completion has not been read yet. Otherwise nothing can come back by itself, and it
          raises :class:`LimitExceeded` rather than wait for the caller's own leases. Leases
          in flight on streams of an asyncio loop running in this thread do not count: their
          completions need that loop, which cannot run while ``acquire`` blocks it.
        * ``timeout=t`` (seconds, ``>= 0``; ``math.inf`` for no bound) waits: it sleeps in
          ``poll(2)`` and wakes when a lease is released in any thread, when a completion
          arrives for one of those Senders (which it reaps: a Sender is read only in the thread
          that uses it, so a waiter that did not reap would wait on itself), and when the account
          gets room (an uncharge or a raised limit anywhere in its tree). Then it raises
          :class:`LimitWaitTimeout` (a :class:`LimitExceeded`).

        Slabs are unmapped only by :meth:`close`, so idle buffers of *another* size class do not
        make room. Without an account nothing limits the pool and ``timeout`` never matters.
        Do not wait on the thread of an asyncio loop whose streams hold the leases: their
        completions are reaped by that loop.

        Raises:
            PoolError: size out of range, or the pool is closed (also while waiting).
            LimitExceeded: a new slab would exceed the pool's account limit and no lease is in
                flight (``timeout=None``), or the slab is larger than that limit (it could never
                fit).
            LimitWaitTimeout: no buffer within ``timeout`` seconds.
            ValueError: ``timeout`` is negative or NaN.
            ConnectionResetByPeer, SendError: reaping a Sender found its connection broken.
        """
        cls = self._class_index(size)
        if self._closed:
            raise PoolError("the pool is closed")
        if timeout is not None:
            _check_timeout(timeout)
        try:
            cache: _ThreadCache = self._local.cache
        except AttributeError:
            cache = self._cache()
        if cache.deferred:
            self._drain(cache)
        try:  # not "if fl": a waiting thread may take the last block between test and pop
            block = cache.free[cls].pop()
        except IndexError:
            block = self._refill(cache, cls, timeout)
        cache.acquires += 1
        if _new_lease is not None:  # Lease(...) without the frame of __new__
            lease: Lease = _new_lease(Lease, self, block, size, cache, self._core)
            return lease
        return Lease(self, block, size, cache)

    def release(self, lease: Lease) -> None:
        """Return ``lease`` to this pool; see :meth:`Lease.release`."""
        self._take_back(lease)
        self._return(lease)

    def _return(self, lease: Lease) -> None:
        block, owner = lease._block, lease._owner
        assert owner is not None
        mine: _ThreadCache | None = getattr(self._local, "cache", None)
        if self._waiters:  # someone waits for a buffer: to the shared list, where all can take it
            if owner is not mine:
                self._cache().cross_releases += 1
            with self._lock:
                self._shared[block.cls].append(block)
                self._dead[1] += 1
                self._wake_waiters()
            return
        if owner is mine:
            fl = owner.free[block.cls]
            fl.append(block)
            owner.releases += 1
            if len(fl) > self._cap[block.cls]:
                self._spill(fl, block.cls)
            return
        self._cache().cross_releases += 1
        if not owner.alive() or len(owner.deferred) >= self._deferred_limit:
            with self._lock:
                self._shared[block.cls].append(block)
                self._reclaimed += 0 if owner.alive() else 1
                self._dead[1] += 1
            return
        owner.deferred.append(block)
        if not owner.alive():  # the owner exited between the check and the append
            with self._lock:
                self._take_deferred(owner)

    def _outstanding(self) -> int:
        acq = self._dead[0] + sum(c.acquires for c in self._caches)
        rel = self._dead[1] + sum(c.releases + len(c.deferred) for c in self._caches)
        return acq - rel

    def stats(self) -> PoolStats:
        """A snapshot of the pool (exact when quiescent)."""
        with self._lock:
            caches = list(self._caches)
            idle = sum(len(x) for x in self._shared) + sum(
                sum(len(fl) for fl in c.free) + len(c.deferred) for c in caches)
            return PoolStats(
                kind=self._kind, slabs=len(self._slabs),
                slab_bytes=sum(s.size for s in self._slabs),
                hugepage_slabs=sum(s.huge for s in self._slabs),
                outstanding=self._outstanding(), in_flight=self._book.in_flight, idle_blocks=idle,
                acquires=self._dead[0] + sum(c.acquires for c in caches),
                releases=self._dead[1] + sum(c.releases + len(c.deferred) for c in caches),
                cross_thread_releases=self._dead[2] + sum(c.cross_releases for c in caches),
                deferred_drained=self._dead[3] + sum(c.drained for c in caches),
                reclaimed_from_dead_threads=self._reclaimed,
                threads=sum(1 for c in caches if c.alive()), held_back=len(self._held),
            )
