"""BufferPool and LockedFreeListPool: leases, lifetimes, alignment, deferred return, accounting."""

from __future__ import annotations

import gc
import itertools
import mmap
import pickle
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zcnet.accounting import PINNED, POOL, Account
from zcnet.errors import BufferLifetimeError, LimitExceeded, PoolError
from zcnet.pool import BufferPool, Lease, LockedFreeListPool

POOLS = [BufferPool, LockedFreeListPool]
SMALL = {"max_size": 64 * 1024, "slab_bytes": 256 * 1024}


class FakeTicket:
    """Stands in for zcnet.sender.Ticket: add_done_callback, completed by the test."""

    def __init__(self) -> None:
        self.done = False
        self._callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def complete(self) -> None:
        self.done = True
        for fn in self._callbacks:
            fn(self)


@pytest.fixture(params=POOLS, ids=["per-thread", "locked"])
def pool(request: pytest.FixtureRequest) -> Iterator[BufferPool | LockedFreeListPool]:
    p = request.param(**SMALL)
    yield p
    p.close(force=True)


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 10_000, 65536])
def test_lease_view_is_exact_aligned_and_writable(
    pool: BufferPool | LockedFreeListPool, size: int
) -> None:
    with pool.acquire(size) as lease:
        view = lease.view
        assert len(view) == size == len(lease) and not view.readonly
        assert lease.address % mmap.PAGESIZE == 0
        assert lease.capacity >= max(size, 4096) and lease.capacity in pool.size_classes
        data = pattern(size, size)
        view[:] = data
        assert view.tobytes() == data
    assert lease.released


def test_buffers_do_not_overlap_and_keep_their_bytes(pool: BufferPool | LockedFreeListPool) -> None:
    leases = [pool.acquire(5000 + i) for i in range(40)]
    for i, lease in enumerate(leases):
        lease.view[:] = pattern(len(lease), i)
    spans = sorted((x.address, x.address + x.capacity) for x in leases)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    for i, lease in enumerate(leases):
        assert lease.view.tobytes() == pattern(len(lease), i)
        lease.release()
    assert pool.stats().outstanding == 0


def test_reuse_after_release(pool: BufferPool | LockedFreeListPool) -> None:
    a = pool.acquire(8192)
    addr = a.address
    a.release()
    b = pool.acquire(8000)
    assert b.address == addr  # LIFO free list: the hot buffer comes back
    b.release()


def test_double_release_and_use_after_release(pool: BufferPool | LockedFreeListPool) -> None:
    lease = pool.acquire(100)
    kept = lease.view
    lease.release()
    with pytest.raises(BufferLifetimeError, match="released twice"):
        lease.release()
    with pytest.raises(BufferLifetimeError, match="released"):
        _ = lease.view
    with pytest.raises(ValueError):  # the memoryview itself was released
        kept[0] = 1


def test_release_refused_while_exported(pool: BufferPool | LockedFreeListPool) -> None:
    lease = pool.acquire(4096)
    export = pickle.PickleBuffer(lease.view)  # holds a buffer export, like a send in progress
    with pytest.raises(BufferLifetimeError, match="still in use"):
        lease.release()
    export.release()
    lease.release()


def test_foreign_lease_and_bad_sizes(pool: BufferPool | LockedFreeListPool) -> None:
    other = BufferPool(**SMALL)
    try:
        lease = other.acquire(10)
        with pytest.raises(PoolError, match="another pool"):
            pool.release(lease)
        with pytest.raises(PoolError, match="Lease"):
            pool.release("nope")  # type: ignore[arg-type]
        lease.release()
    finally:
        other.close()
    with pytest.raises(PoolError, match="range"):
        pool.acquire(64 * 1024 + 1)
    with pytest.raises(PoolError):
        pool.acquire(-1)
    with pytest.raises(TypeError):
        pool.acquire(1.0)  # type: ignore[arg-type]


def test_close_refuses_outstanding_then_refuses_acquire() -> None:
    p = BufferPool(**SMALL)
    lease = p.acquire(10)
    with pytest.raises(PoolError, match="still out"):
        p.close()
    lease.release()
    p.close()
    assert p.closed
    with pytest.raises(PoolError, match="closed"):
        p.acquire(10)


@pytest.mark.parametrize("cls", POOLS)
def test_release_when_done_moves_pool_to_pinned_and_back(cls: type[BufferPool]) -> None:
    acct = Account("svc", limit=1 << 20)
    p = cls(account=acct, **SMALL)
    lease = p.acquire(20_000)
    slab_bytes = acct.usage(POOL)
    assert slab_bytes > 0 and acct.usage(PINNED) == 0
    ticket = FakeTicket()
    with lease:  # leaving the block does not release an in-flight lease
        lease.release_when_done(ticket)
    assert lease.in_flight and not lease.released
    assert acct.usage(PINNED) == lease.capacity and acct.usage() == slab_bytes
    with pytest.raises(BufferLifetimeError, match="in flight"):
        lease.release()
    with pytest.raises(PoolError, match="in flight"):
        p.close()
    t = threading.Thread(target=ticket.complete)  # completions arrive on another thread
    t.start()
    t.join()
    assert lease.released and acct.usage(PINNED) == 0 and acct.usage(POOL) == slab_bytes
    assert p.stats().outstanding == 0
    p.close()
    assert acct.usage() == 0


def test_release_when_done_with_a_ticket_already_done() -> None:
    p = BufferPool(**SMALL)
    ticket = FakeTicket()
    ticket.complete()
    lease = p.acquire(10)
    lease.release_when_done(ticket)
    assert lease.released
    p.close()


def test_pool_growth_respects_the_account_limit() -> None:
    acct = Account("tight", limit=256 * 1024)
    p = BufferPool(account=acct, **SMALL)
    a = p.acquire(4096)  # one 256 KiB slab for the 4 KiB class
    with pytest.raises(LimitExceeded, match="tight"):
        p.acquire(8192)  # a second class needs a second slab
    a.release()
    p.close()
    assert acct.usage() == 0


def test_cross_thread_release_is_deferred_and_drained_by_owner() -> None:
    p = BufferPool(**SMALL)
    leases = [p.acquire(4096) for _ in range(10)]
    t = threading.Thread(target=lambda: [x.release() for x in leases])
    t.start()
    t.join()
    st = p.stats()
    assert st.cross_thread_releases == 10 and st.outstanding == 0 and st.deferred_drained == 0
    again = p.acquire(4096)  # the owner drains its deferred list on its next acquire
    assert p.stats().deferred_drained == 10
    assert again.address in {x.address for x in leases}
    again.release()
    p.close()


def test_leases_of_a_dead_thread_are_reclaimed() -> None:
    p = BufferPool(**SMALL)
    out: list[Lease] = []

    def worker() -> None:
        for i in range(6):
            lease = p.acquire(4096)
            lease.view[:] = pattern(4096, i)
            out.append(lease)
        out.pop().release()  # one back on the worker's own list

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    del t
    gc.collect()
    for i, lease in enumerate(out):
        assert lease.view.tobytes() == pattern(4096, i)
        lease.release()  # the owner is gone: straight to the shared list
    st = p.stats()
    assert st.outstanding == 0 and st.reclaimed_from_dead_threads == 5
    got = [p.acquire(4096) for _ in range(6)]  # the dead thread's lists come back to others
    after = p.stats()
    assert after.slabs == st.slabs and after.idle_blocks == st.idle_blocks - 6
    assert after.threads == 1
    for x in got:
        x.release()
    p.close()


def test_hugepage_slabs_are_2mib_aligned() -> None:
    p = BufferPool(max_size=4 << 20, slab_bytes=4 << 20)
    lease = p.acquire(4 << 20)
    if p.stats().hugepage_slabs:
        assert lease.address % (2 << 20) == 0
    lease.view[:] = b"\x5a" * len(lease)
    assert lease.view.tobytes().count(b"\x5a") == len(lease)
    lease.release()
    p.close()


def _spill_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of BufferPool._spill (the Python method), which still does its work."""
    calls: list[int] = []
    original = BufferPool._spill

    def counted(self: BufferPool, fl: list[Any], cls: int) -> None:
        calls.append(cls)
        original(self, fl, cls)

    monkeypatch.setattr(BufferPool, "_spill", counted)
    return calls


def test_releases_past_the_thread_cache_spill_to_the_shared_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Releasing more leases than this thread's list keeps (thread_cache_bytes) moves the rest to
    the pool's shared lists (compiled: in C, without the Python method); every block comes back
    once, and they are acquired again with their contents intact."""
    from zcnet._accel import speedups

    calls = _spill_counted(monkeypatch)
    p = BufferPool(max_size=64 * 1024, slab_bytes=1024 * 1024, thread_cache_bytes=256 * 1024)
    leases = [p.acquire(64 * 1024) for _ in range(40)]  # the cap is 4 blocks of this class
    for i, lease in enumerate(leases):
        lease.view[:8] = i.to_bytes(8, "little")
    blocks = {id(lease._block) for lease in leases}
    for lease in leases:
        lease.release()
    st = p.stats()
    assert st.outstanding == 0 and st.idle_blocks == 40 and st.releases == 40
    assert (calls == []) if speedups is not None else (len(calls) > 0)
    again = [p.acquire(64 * 1024) for _ in range(40)]
    assert {id(lease._block) for lease in again} == blocks  # no block lost or doubled
    assert p.stats().slabs == st.slabs
    for lease in again:
        lease.release()
    p.close()


def test_a_spill_waits_for_the_pool_lock_held_by_another_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While another thread holds the pool's lock, a release that must spill does not touch the
    shared lists: it waits for the lock (the Python method) and then completes; nothing lost."""
    calls = _spill_counted(monkeypatch)
    p = BufferPool(max_size=64 * 1024, slab_bytes=1024 * 1024, thread_cache_bytes=256 * 1024)
    locked, go, acquired = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with p._lock:
            locked.set()
            go.wait(5)

    done = threading.Event()

    def release_all() -> None:  # the leases' own thread: releases go to its list, then spill
        leases = [p.acquire(64 * 1024) for _ in range(12)]
        acquired.set()
        assert locked.wait(5)
        for lease in leases:
            lease.release()
        done.set()

    r = threading.Thread(target=release_all)
    r.start()
    assert acquired.wait(5)
    t = threading.Thread(target=hold)
    t.start()
    assert not done.wait(0.3)  # blocked on the lock, in the Python spill
    assert calls
    go.set()
    t.join(5)
    r.join(5)
    assert done.is_set()
    st = p.stats()
    assert st.outstanding == 0 and st.idle_blocks == 12
    p.close()
