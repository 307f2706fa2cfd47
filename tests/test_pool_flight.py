"""The book of leases in flight (zcnet._core.flight.FlightBook and its compiled twin) and the
compiled ticket that carries its lease: both books, driven with real pool leases, behave alike."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from zcnet._accel import speedups
from zcnet._core.flight import IN_FLIGHT, LEASED, FlightBook
from zcnet.errors import BufferLifetimeError, PoolError
from zcnet.pool import BufferPool
from zcnet.sender import Ticket, _new

from .test_pool import SMALL, FakeTicket

BOOKS: list[Any] = [FlightBook] + ([] if speedups is None else [speedups.FlightBook])


@pytest.fixture(params=BOOKS, ids=[b.__module__.rsplit(".", 1)[-1] for b in BOOKS])
def book(request: pytest.FixtureRequest) -> Any:
    return request.param(threading.Lock())


@pytest.fixture
def pool() -> Iterator[BufferPool]:
    p = BufferPool(**SMALL)
    yield p
    p.close(force=True)


def test_check_sums_the_size_classes_and_changes_nothing(book: Any, pool: BufferPool) -> None:
    leases = [pool.acquire(n) for n in (1, 4096, 4097, 65536)]
    assert book.check(pool, leases) == 4096 + 4096 + 8192 + 65536
    assert book.in_flight == 0 and all(lease._state == LEASED for lease in leases)
    for lease in leases:
        lease.release()


def test_check_refuses_with_nothing_changed(book: Any, pool: BufferPool) -> None:
    other = BufferPool(**SMALL)
    try:
        mine, theirs = pool.acquire(100), other.acquire(100)
        with pytest.raises(PoolError, match="another pool"):
            book.check(pool, [mine, theirs])
        with pytest.raises(PoolError, match="expected a Lease"):
            book.check(pool, [mine, b"bytes"])
        with pytest.raises(BufferLifetimeError, match="twice in one batch"):
            book.check(pool, [mine, pool.acquire(10), mine])
        gone = pool.acquire(100)
        gone.release()
        with pytest.raises(BufferLifetimeError, match="not simply leased"):
            book.check(pool, [mine, gone])
        assert mine._state == LEASED
        mine.release()  # still simply leased: the refusals changed nothing
        theirs.release()
    finally:
        other.close(force=True)


def test_take_off_and_land_keep_the_counts(book: Any, pool: BufferPool) -> None:
    leases = [pool.acquire(1000) for _ in range(3)]
    tickets = [FakeTicket() for _ in leases]
    sender = object()
    key = (threading.get_ident(), id(sender))
    book.take_off(leases, tickets, key, sender)
    assert book.in_flight == 3
    assert book.flying == dict(zip(leases, tickets, strict=True))
    assert list(book.flying) == leases  # in take-off order
    assert book.reapers == {key: [sender, 3]}
    assert all(lease._state == IN_FLIGHT and lease._reaper == key for lease in leases)
    book.land(leases[1])  # from the middle, then the ends
    book.land(leases[0])
    assert book.in_flight == 1 and book.reapers == {key: [sender, 1]}
    assert list(book.flying) == [leases[2]]
    late = pool.acquire(10)  # the same key again while one is in flight: the same entry
    late_ticket = FakeTicket()
    book.take_off([late], [late_ticket], key, sender)
    assert book.reapers == {key: [sender, 2]}
    assert list(book.flying) == [leases[2], late]
    book.land(leases[2])
    book.land(late)
    assert book.in_flight == 0 and book.flying == {} and book.reapers == {}
    book.take_off([late], [late_ticket], None, None)  # no key: nothing to reap for
    assert book.flying == {late: late_ticket} and book.reapers == {}
    book.land(late)
    assert book.in_flight == 0 and book.flying == {}
    assert leases[2]._reaper is None
    with pytest.raises(BufferLifetimeError, match="not in flight"):
        book.land(pool.acquire(10))
    # the landed leases are still "in flight" until the pool claims them: the test does it
    for lease, ticket in zip(leases, tickets, strict=True):
        assert ticket._callbacks == [lease._on_done]  # a plain ticket is told by callback


def test_take_off_of_a_lease_twice_lists_it_once(book: Any, pool: BufferPool) -> None:
    # the pool's check() refuses this before take_off; the book itself stays consistent
    lease = pool.acquire(100)
    first, second = FakeTicket(), FakeTicket()
    book.take_off([lease, lease], [first, second], None, None)
    assert book.flying == {lease: second} and book.in_flight == 2
    book.land(lease)
    assert book.flying == {} and book.in_flight == 1


def test_a_compiled_ticket_carries_its_lease_back(pool: BufferPool) -> None:
    if speedups is None:
        pytest.skip("the pure-Python Ticket lands its lease through a done callback")
    lease = pool.acquire(5000)
    lease.view[:] = b"x" * 5000
    ticket = _new(Ticket)
    ticket.nbytes = 5000
    seen: list[bool] = []
    lease.release_when_done(ticket)
    assert ticket._lease is lease and ticket._callbacks is None  # carried, no callback
    ticket.add_done_callback(lambda t: seen.append(lease.released))
    second = pool.acquire(100)
    second.release_when_done(ticket)  # the ticket already carries one: a callback for this one
    assert ticket._callbacks is not None and len(ticket._callbacks) == 2
    assert pool.stats().in_flight == 2
    ticket._finish(False)
    assert ticket._lease is None and lease.released and second.released
    assert seen == [True]  # the lease was back before the callbacks ran
    assert pool.stats().in_flight == 0 and pool.stats().outstanding == 0


def test_a_ticket_done_already_lands_its_lease_at_once(pool: BufferPool) -> None:
    ticket = _new(Ticket)
    ticket.nbytes = 1
    ticket.done = True
    lease = pool.acquire(1)
    lease.release_when_done(ticket)
    assert lease.released and pool.stats().in_flight == 0


def test_a_compiled_ticket_done_already_lands_without_the_python_methods(
    pool: BufferPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a batch reaps as it sends, so some tickets are done before their leases are handed over:
    # those land at once in C, not through a done callback and BufferPool._end_flight
    if speedups is None:
        pytest.skip("the pure-Python Ticket lands its lease through a done callback")

    def refuse(*args: object) -> None:
        raise AssertionError("the Python landing ran")

    monkeypatch.setattr(BufferPool, "_end_flight", refuse)
    monkeypatch.setattr(BufferPool, "_return", refuse)
    ticket = _new(Ticket)
    ticket.nbytes = 1
    ticket._finish(False)
    lease = pool.acquire(1)
    lease.release_when_done(ticket)
    assert lease.released and ticket._lease is None and ticket._callbacks is None
    assert pool.stats().in_flight == 0 and pool.stats().outstanding == 0
    assert pool.acquire(1)._block is lease._block  # back on this thread's list


def test_a_lease_in_flight_and_its_pool_are_collected() -> None:
    # lease -> pool -> book -> lease, and the ticket: a cycle the collector must see through the
    # compiled lease's fields (LeaseBase supports GC)
    p = BufferPool(**SMALL)
    lease = p.acquire(100)
    ticket = _new(Ticket)
    ticket.nbytes = 100
    lease.release_when_done(ticket)
    refs = weakref.ref(p), weakref.ref(lease), weakref.ref(ticket)
    del p, lease, ticket
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


# -- the compiled common cases (PoolCore) and the Python methods they hand over to ----------------

def test_acquire_refuses_as_the_python_one_does(pool: BufferPool) -> None:
    with pytest.raises(PoolError, match="outside this pool's range"):
        pool.acquire(SMALL["max_size"] + 1)
    with pytest.raises(PoolError, match="outside this pool's range"):
        pool.acquire(-1)
    with pytest.raises(TypeError, match="size must be an int"):
        pool.acquire(True)
    with pytest.raises(TypeError, match="size must be an int"):
        pool.acquire(4096.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire(10, timeout=-1)
    lease = pool.acquire(10, timeout=None)
    second = pool.acquire(size=20)
    assert (lease.size, second.size) == (10, 20)
    lease.release()
    second.release()
    pool.close()
    with pytest.raises(PoolError, match="closed"):
        pool.acquire(10)


def test_the_core_reads_block_fields_only_from_slots() -> None:
    if speedups is None:
        pytest.skip("PoolCore is the compiled implementation's")
    from zcnet.pool import Lease, _Block, _Slab

    p = BufferPool(**SMALL)
    base = (p, Lease, p._local, p._book, None, set(), [1], 4096, BufferPool.acquire,
            BufferPool.release)
    try:
        with pytest.raises(TypeError, match="go together"):
            speedups.PoolCore(*base, block_type=_Block)

        class Loose:  # fields in an instance dict, not __slots__ members
            slab = start = cls = mm = None

        with pytest.raises(TypeError, match="not a __slots__ member"):
            speedups.PoolCore(*base, block_type=Loose, slab_type=_Slab)
        core = speedups.PoolCore(*base, block_type=_Block, slab_type=_Slab)
        assert core.closed is False
    finally:
        p.close()


def test_a_block_comes_back_to_the_list_it_left(pool: BufferPool) -> None:
    first = pool.acquire(5000)
    address = first.address
    first.view[:4] = b"abcd"
    ticket = _new(Ticket)
    ticket.nbytes = 5000
    first.release_when_done(ticket)
    ticket._finish(False)  # landed on this thread: back on its free list, on top
    again = pool.acquire(5000)
    assert again.address == address and again is not first and first.released
    stats = pool.stats()
    assert (stats.acquires, stats.releases, stats.in_flight) == (2, 1, 0)
    again.release()


def test_each_thread_acquires_from_its_own_list(pool: BufferPool) -> None:
    # the compiled acquire remembers the last thread's list; threads run one after another here,
    # so a new one often gets the identity of the one that just exited and must not get its list
    owners: list[object] = []

    def work() -> None:
        lease = pool.acquire(5000)
        owners.append(lease._owner)
        lease.release()

    for _ in range(6):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    work()
    work()  # this thread twice: its own list both times
    assert len({id(o) for o in owners[:6]}) == 6 and owners[6] is owners[7]
    assert all(o not in owners[:6] for o in owners[6:])
    stats = pool.stats()
    assert stats.acquires == stats.releases == 8 and stats.outstanding == 0


def test_a_lease_landed_on_another_thread_goes_back_to_its_owner(pool: BufferPool) -> None:
    lease = pool.acquire(5000)
    address = lease.address
    ticket = _new(Ticket)
    ticket.nbytes = 5000
    lease.release_when_done(ticket)
    done = threading.Thread(target=ticket._finish, args=(False,))
    done.start()
    done.join()
    assert lease.released
    stats = pool.stats()
    assert stats.cross_thread_releases == 1 and stats.outstanding == 0
    assert pool.acquire(5000).address == address  # the owner drained its deferred returns


def test_release_refuses_as_the_python_one_does(pool: BufferPool) -> None:
    other = BufferPool(**SMALL)
    try:
        theirs = other.acquire(10)
        with pytest.raises(PoolError, match="another pool"):
            pool.release(theirs)
        with pytest.raises(PoolError, match="expected a Lease"):
            pool.release(b"bytes")  # type: ignore[arg-type]
        theirs.release()
    finally:
        other.close(force=True)
    lease = pool.acquire(100)
    view = lease.view[:10]  # a view made from the lease's view keeps its memory in use
    with pytest.raises(BufferLifetimeError, match="still in use"):
        lease.release()
    view.release()
    lease.release()
    with pytest.raises(BufferLifetimeError, match="released twice"):
        lease.release()
    flying = pool.acquire(100)
    ticket = _new(Ticket)
    ticket.nbytes = 100
    flying.release_when_done(ticket)
    with pytest.raises(BufferLifetimeError, match="in flight"):
        flying.release()
    ticket._finish(False)
    assert flying.released and pool.stats().outstanding == 0


def test_a_subclass_keeps_its_own_acquire_and_release() -> None:
    class Counting(BufferPool):
        calls = 0

        def acquire(self, size: int, timeout: float | None = None) -> Any:
            Counting.calls += 1
            return super().acquire(size, timeout)

        def release(self, lease: Any) -> None:
            Counting.calls += 10
            super().release(lease)

    p = Counting(**SMALL)
    try:
        p.acquire(100).release()
        assert Counting.calls == 11
    finally:
        p.close(force=True)


def test_a_pool_dropped_without_close_is_freed_at_once() -> None:
    # the compiled acquire is the pool's own attribute: it must not keep the pool in a cycle
    gc.disable()
    try:
        p = BufferPool(**SMALL)
        p.acquire(100).release()
        ref = weakref.ref(p)
        # compiled: the core's acquire, which does not keep its pool alive (a bound method of the
        # Python acquire would)
        acquire = p.acquire if speedups is not None else None
        del p
        assert ref() is None
        if acquire is not None:
            with pytest.raises(ReferenceError, match="gone"):
                acquire(10)
    finally:
        gc.enable()
