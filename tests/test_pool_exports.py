"""A lease is not released while anything still uses its memory (views, numpy, ctypes, exports
of the lease itself).

Every case here passed ``release()`` before the pool gave each block a managed buffer of its own:
``memoryview(view)`` and the objects built like it register on the view's managed buffer, not
on the view, so ``view.release()`` alone did not see them and the stale object then wrote into
the next lease of the same block. The compiled implementation reads the same counters in C
(zcnet/_ext/views.c) and counts exports of the lease itself (BufferBase); the pure-Python one
probes the managed buffer's counter. Both run this file.
"""

from __future__ import annotations

import ctypes
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from zcnet import pool as poolmod
from zcnet._accel import speedups
from zcnet.accounting import PINNED, POOL, Account
from zcnet.errors import BufferLifetimeError, LimitWaitTimeout, PoolError
from zcnet.pool import BufferPool, Lease, LockedFreeListPool

from .test_pool import SMALL, FakeTicket, pattern
from .test_pool_buffer import LEASE_IS_BUFFER, lease_is_buffer, python_only

POOLS = [BufferPool, LockedFreeListPool]


@pytest.fixture(params=POOLS, ids=["per-thread", "locked"])
def pool(request: pytest.FixtureRequest) -> Iterator[BufferPool | LockedFreeListPool]:
    p = request.param(**SMALL)
    yield p
    p.close(force=True)


Make = Callable[[Lease], Any]


def _derived_views() -> dict[str, tuple[Make, int]]:
    """name -> (make an object that uses the lease's memory, offset of its first byte)."""
    cases: dict[str, tuple[Make, int]] = {
        "memoryview(view)": (lambda lease: memoryview(lease.view), 0),
        "memoryview(memoryview(view))": (lambda lease: memoryview(memoryview(lease.view)), 0),
        "slice": (lambda lease: lease.view[100:200], 100),
        "cast": (lambda lease: lease.view.cast("I"), 0),
        "numpy.frombuffer": (lambda lease: np.frombuffer(lease.view, dtype=np.uint8), 0),
        "numpy view of a slice": (
            lambda lease: np.frombuffer(lease.view[8:], dtype=np.uint64), 8),
        "ctypes.from_buffer": (lambda lease: (ctypes.c_char * 64).from_buffer(lease.view), 0),
        "ctypes.c_char.from_buffer": (
            lambda lease: ctypes.c_char.from_buffer(lease.view, 5), 5),
        "PickleBuffer(view)": (lambda lease: pickle.PickleBuffer(lease.view), 0),
        "PickleBuffer(slice)": (lambda lease: pickle.PickleBuffer(lease.view[7:]), 7),
    }
    if LEASE_IS_BUFFER:
        cases["memoryview(lease)"] = (lambda lease: memoryview(lease), 0)
        cases["numpy.frombuffer(lease)"] = (lambda lease: np.frombuffer(lease, np.uint8), 0)
        cases["memoryview(memoryview(lease))"] = (
            lambda lease: memoryview(memoryview(lease)), 0)
        cases["slice of memoryview(lease)"] = (lambda lease: memoryview(lease)[300:], 300)
        cases["numpy view of memoryview(lease)[16:]"] = (
            lambda lease: np.frombuffer(memoryview(lease)[16:], np.uint32), 16)
        if speedups is not None:  # (PEP 688's wrapper of a Python class's export cannot be
            # re-exported by a PickleBuffer: "a bytes-like object is required, not
            # '_buffer_wrapper'", CPython 3.12 and 3.13)
            cases["PickleBuffer(lease)"] = (lambda lease: pickle.PickleBuffer(lease), 0)
        cases["ctypes.from_buffer(lease)"] = (
            lambda lease: (ctypes.c_char * 32).from_buffer(lease), 0)
    return cases


DERIVED = _derived_views()


@pytest.mark.parametrize(("make", "offset"), DERIVED.values(), ids=DERIVED.keys())
def test_release_is_refused_while_a_derived_object_is_alive(
    pool: BufferPool | LockedFreeListPool, make: Make, offset: int
) -> None:
    lease = pool.acquire(8192)
    view = lease.view
    view[:] = pattern(8192, 3)
    export = make(lease)
    with pytest.raises(BufferLifetimeError, match="still in use") as info:
        lease.release()
    assert repr(lease) in str(info.value)
    # nothing changed: the lease, its view and the export all still work, on the same bytes
    assert not lease.released and lease.view is view
    new = pattern(8192, 4)
    view[:] = new
    seen = memoryview(export).tobytes()
    assert len(seen) > 0 and seen == new[offset:offset + len(seen)]
    assert bytes(view) == new
    del export, seen
    lease.release()
    assert lease.released
    with pytest.raises(ValueError):
        view[0] = 1  # the pool released the lease's view
    again = pool.acquire(8192)  # the same block (LIFO): its bytes are the last ones written
    assert again.address == lease.address and bytes(again.view) == new
    again.release()


def test_a_stale_export_cannot_write_into_the_next_lease(
    pool: BufferPool | LockedFreeListPool,
) -> None:
    lease = pool.acquire(4096)
    stale = memoryview(lease.view)
    with pytest.raises(BufferLifetimeError):
        lease.release()
    # had the release gone through, the next acquire would hand out this block while
    # ``stale`` still wrote into it
    other = pool.acquire(4096)
    assert other.address != lease.address
    other.view[:] = pattern(4096, 9)
    stale[:] = b"\xff" * 4096
    assert bytes(other.view) == pattern(4096, 9)
    assert bytes(lease.view) == b"\xff" * 4096
    stale.release()
    lease.release()
    other.release()


def test_copies_and_released_views_do_not_hold_a_lease(
    pool: BufferPool | LockedFreeListPool,
) -> None:
    lease = pool.acquire(10_000)
    lease.view[:] = pattern(10_000, 1)
    copy = bytes(lease.view)
    copy2 = lease.view.tobytes()
    arr = np.array(lease.view)  # np.array copies
    with memoryview(lease.view) as m:  # released at the end of the block, still referenced
        assert m[0] == pattern(1, 1)[0]
    sl = lease.view[10:20]
    sl.release()
    lease.release()
    assert copy == copy2 == pattern(10_000, 1) and arr.tobytes() == copy
    assert m is not None and sl is not None


@python_only
def test_exports_counter_is_found_on_cpython() -> None:
    # The precise check (a released view that is still referenced does not count) needs the
    # managed buffer's export counter; on CPython 3.11-3.13 the probe must find it.
    assert poolmod._EXPORTS_AT is not None


@python_only
def test_refcount_fallback_refuses_conservatively(pool: BufferPool | LockedFreeListPool) -> None:
    lease = pool.acquire(4096)
    lease._block.cell = None  # as if the export counter had not been found
    m = memoryview(lease.view)
    with pytest.raises(BufferLifetimeError, match="still in use"):
        lease.release()
    m.release()  # released, but still referenced: the fallback cannot tell
    with pytest.raises(BufferLifetimeError, match="still in use"):
        lease.release()
    del m
    lease.release()
    assert lease.released


@lease_is_buffer
def test_buffer_export_of_a_lease_of_the_locked_pool() -> None:
    p = LockedFreeListPool(**SMALL)
    lease = p.acquire(5000)
    a = np.frombuffer(lease, dtype=np.uint8)  # type: ignore[call-overload]
    with pytest.raises(BufferLifetimeError):
        lease.release()
    del a
    lease.release()
    p.close()


@pytest.mark.parametrize("cls", POOLS)
def test_a_completion_while_exported_holds_the_lease_back(cls: type[BufferPool]) -> None:
    acct = Account("svc", limit=SMALL["slab_bytes"])  # one slab: 4 buffers of 64 KiB
    p = cls(account=acct, **SMALL)
    leases = [p.acquire(65536) for _ in range(4)]
    for i, lease in enumerate(leases):
        lease.view[:] = pattern(65536, i)
    held = leases[0]
    export = np.frombuffer(held.view, dtype=np.uint8)
    ticket = FakeTicket()
    held.release_when_done(ticket)
    assert acct.usage(PINNED) == 65536
    ticket.complete()
    assert held.held_back and not held.in_flight and not held.released
    assert "held back" in repr(held)
    assert acct.usage(PINNED) == 0 and acct.usage(POOL) == SMALL["slab_bytes"]
    assert p.stats().held_back == 1 and p.stats().in_flight == 0
    with pytest.raises(BufferLifetimeError, match="release_when_done"):
        held.release()
    with pytest.raises(LimitWaitTimeout):  # the held-back buffer is not handed out
        p.acquire(65536, timeout=0)
    with pytest.raises(PoolError, match="held back"):
        p.close()
    assert export.tobytes() == pattern(65536, 0)  # the export still sees its bytes
    del export
    again = p.acquire(65536, timeout=0)  # the export is gone: the pool takes it back
    assert again.address == held.address and held.released
    assert p.stats().held_back == 0
    for i, lease in enumerate(leases[1:], 1):
        assert bytes(lease.view) == pattern(65536, i)
        lease.release()
    again.release()
    p.close()
    assert acct.usage() == 0


def test_close_takes_back_a_held_lease_whose_export_is_gone() -> None:
    p = BufferPool(**SMALL)
    lease = p.acquire(4096)
    m = lease.view[1:]
    ticket = FakeTicket()
    lease.release_when_done(ticket)
    ticket.complete()
    assert lease.held_back
    del m
    p.close()
    assert lease.released and p.closed
