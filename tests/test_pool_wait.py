"""acquire(size, timeout): waiting for a buffer when the pool's account is full.

The account in these tests holds exactly one slab of 64 KiB buffers (four of them), so a fifth
64 KiB acquire can be served only by a buffer that comes back.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from zcnet.accounting import PINNED, POOL, Account
from zcnet.errors import (
    BufferLifetimeError,
    LimitExceeded,
    LimitWaitTimeout,
    PoolError,
    SocketClosedError,
    TimeoutExpired,
)
from zcnet.pool import BufferPool, Lease, LockedFreeListPool
from zcnet.sender import Sender, SendPolicy

from .conftest import requires_zerocopy
from .rx_helpers import PATTERN, PatternReader, tcp_pair
from .test_pool import SMALL, FakeTicket, pattern

POOLS = [BufferPool, LockedFreeListPool]
BUF = 65536
PER_SLAB = SMALL["slab_bytes"] // BUF  # 4


@pytest.fixture(params=POOLS, ids=["per-thread", "locked"])
def full_pool(request: pytest.FixtureRequest) -> Iterator[tuple[BufferPool, list[Lease]]]:
    """A pool whose account (one slab) is used up by four leases, each filled with a pattern."""
    acct = Account("tx", limit=SMALL["slab_bytes"])
    p = request.param(account=acct, **SMALL)
    leases = [p.acquire(BUF) for _ in range(PER_SLAB)]
    for i, lease in enumerate(leases):
        lease.view[:] = pattern(BUF, i)
    yield p, leases
    for lease in leases:
        if not (lease.released or lease.in_flight):
            lease.release()
    p.close()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def waiting(p: BufferPool) -> bool:
    return bool(p._waiters)  # a thread is inside a waiting acquire


def check_untouched(leases: list[Lease], skip: int) -> None:
    for i, lease in enumerate(leases):
        if i != skip:
            assert bytes(lease.view) == pattern(BUF, i), f"lease {i} changed"


def test_default_fails_at_once_and_timeout_zero_too(
    full_pool: tuple[BufferPool, list[Lease]],
) -> None:
    p, leases = full_pool
    with pytest.raises(LimitExceeded, match="tx") as info:
        p.acquire(BUF)
    assert type(info.value) is LimitExceeded  # timeout=None: no waiting, as before
    with pytest.raises(LimitWaitTimeout):
        p.acquire(BUF, timeout=0)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            p.acquire(BUF, timeout=bad)
    check_untouched(leases, -1)


def test_timeout_raises_after_about_the_timeout(
    full_pool: tuple[BufferPool, list[Lease]],
) -> None:
    p, leases = full_pool
    t0 = time.monotonic()
    cpu0 = time.thread_time()
    with pytest.raises(LimitWaitTimeout) as info:
        p.acquire(BUF, timeout=0.3)
    elapsed = time.monotonic() - t0
    cpu = time.thread_time() - cpu0
    assert isinstance(info.value, LimitExceeded) and isinstance(info.value, TimeoutExpired)
    assert info.value.account == "tx" and info.value.limit == SMALL["slab_bytes"]
    assert 0.3 <= elapsed < 10, elapsed
    assert cpu < 0.2, f"the wait burned {cpu:.3f} s of CPU: not sleeping"
    assert not p._waiters
    check_untouched(leases, -1)


@pytest.mark.parametrize("releaser", ["other thread", "acquiring thread"])
def test_a_lease_released_in_another_thread_wakes_the_waiter(
    full_pool: tuple[BufferPool, list[Lease]], releaser: str,
) -> None:
    p, leases = full_pool
    if releaser == "acquiring thread":  # a lease owned by a third thread (a BufferPool cache)
        leases[2].release()
        got: list[Lease] = []
        t = threading.Thread(target=lambda: got.append(p.acquire(BUF)))
        t.start()
        t.join()
        leases[2] = got[0]
        leases[2].view[:] = pattern(BUF, 2)
    events: list[str] = []
    target = leases[2]

    def release_later() -> None:
        wait_until(lambda: waiting(p))
        events.append("released")
        target.release()

    t = threading.Thread(target=release_later)
    t.start()
    lease = p.acquire(BUF, timeout=30)
    events.append("acquired")
    t.join()
    assert events == ["released", "acquired"]
    assert lease.address == target.address
    lease.view[:] = pattern(BUF, 99)
    assert bytes(lease.view) == pattern(BUF, 99)
    check_untouched(leases, 2)
    lease.release()


def test_room_made_elsewhere_in_the_account_wakes_the_waiter() -> None:
    acct = Account("tx", limit=2 * SMALL["slab_bytes"])
    p = BufferPool(account=acct, **SMALL)
    leases = [p.acquire(BUF) for _ in range(PER_SLAB)]
    other = acct.charge(SMALL["slab_bytes"], PINNED)  # someone else's bytes fill the rest

    def uncharge_later() -> None:
        wait_until(lambda: waiting(p))
        other.release()

    t = threading.Thread(target=uncharge_later)
    t.start()
    lease = p.acquire(BUF, timeout=30)  # a second slab fits now
    t.join()
    assert acct.usage(POOL) == 2 * SMALL["slab_bytes"] and p.stats().slabs == 2
    lease.view[:] = pattern(BUF, 5)
    assert bytes(lease.view) == pattern(BUF, 5)
    for x in [*leases, lease]:
        x.release()
    p.close()
    assert acct.usage() == 0


def test_idle_buffers_of_a_live_thread_are_taken_back_without_waiting() -> None:
    acct = Account("tx", limit=SMALL["slab_bytes"])
    p = BufferPool(account=acct, **SMALL)
    done = threading.Event()
    ready = threading.Event()
    addrs: list[int] = []

    def hoarder() -> None:  # acquires all four, releases them onto its own list, stays alive
        held = [p.acquire(BUF) for _ in range(PER_SLAB)]
        addrs.extend(x.address for x in held)
        for x in held:
            x.release()
        ready.set()
        done.wait(30)

    t = threading.Thread(target=hoarder)
    t.start()
    try:
        assert ready.wait(30)
        got = [p.acquire(BUF) for _ in range(PER_SLAB)]  # timeout=None: must not fail
        assert sorted(x.address for x in got) == sorted(addrs)
        for i, x in enumerate(got):
            x.view[:] = pattern(BUF, i)
        for i, x in enumerate(got):
            assert bytes(x.view) == pattern(BUF, i)
            x.release()
    finally:
        done.set()
        t.join()
    assert p.stats().outstanding == 0
    p.close()


def test_a_completion_on_another_thread_wakes_the_waiter(
    full_pool: tuple[BufferPool, list[Lease]],
) -> None:
    p, leases = full_pool
    ticket = FakeTicket()
    leases[1].release_when_done(ticket)

    def complete_later() -> None:
        wait_until(lambda: waiting(p))
        ticket.complete()

    t = threading.Thread(target=complete_later)
    t.start()
    lease = p.acquire(BUF, timeout=30)
    t.join()
    assert lease.address == leases[1].address and leases[1].released
    check_untouched(leases, 1)
    lease.release()


def test_default_waits_while_a_return_is_on_its_way(
    full_pool: tuple[BufferPool, list[Lease]],
) -> None:
    """timeout=None: a lease in flight comes back, so the default waits for it; a lease whose
    ticket failed may never come back, so the default does not wait for that one (a ticket
    failing during the wait ends it too)."""
    p, leases = full_pool
    ticket = FakeTicket()
    leases[1].release_when_done(ticket)

    def complete_later() -> None:
        wait_until(lambda: waiting(p))
        ticket.complete()

    t = threading.Thread(target=complete_later)
    t.start()
    lease = p.acquire(BUF)  # no failure while the return is on its way
    t.join()
    assert lease.address == leases[1].address
    check_untouched(leases, 1)

    failed = FakeTicket()
    leases[2].release_when_done(failed)
    failed.error = SocketClosedError("closed with the kernel still holding the buffer")
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded) as info:
        p.acquire(BUF)
    assert type(info.value) is LimitExceeded and time.monotonic() - t0 < 1

    failing = FakeTicket()
    leases[3].release_when_done(failing)

    def fail_later() -> None:
        wait_until(lambda: waiting(p))
        failing.error = SocketClosedError("closed")

    t = threading.Thread(target=fail_later)
    t.start()
    with pytest.raises(LimitExceeded):
        p.acquire(BUF)  # re-checked within a second or so
    t.join()
    lease.release()
    failed.complete()  # the kernel let go after all: both come back
    failing.complete()
    assert leases[2].released and leases[3].released


def test_close_wakes_a_waiter_with_pool_error() -> None:
    acct = Account("tx", limit=SMALL["slab_bytes"])
    p = LockedFreeListPool(account=acct, **SMALL)
    leases = [p.acquire(BUF) for _ in range(PER_SLAB)]
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            p.acquire(BUF, timeout=30)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: waiting(p))
    with pytest.raises(PoolError, match="still out"):
        p.close()
    assert t.is_alive()
    with pytest.raises(BufferLifetimeError, match="stay mapped"):  # the leases' views live on
        p.close(force=True)
    t.join(30)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], PoolError), errors
    assert "closed" in str(errors[0])
    for i, x in enumerate(leases):
        x.view[:] = pattern(BUF, i)
        assert bytes(x.view) == pattern(BUF, i)


# -- a real Sender: completions come from the kernel's error queue ---------------------------


@requires_zerocopy
@pytest.mark.parametrize("cls", POOLS)
@pytest.mark.parametrize("timeout", [None, 30.0], ids=["default", "wait"])
def test_a_lease_in_flight_on_a_sender_of_this_thread_comes_back(
    cls: type[BufferPool], timeout: float | None,
) -> None:
    acct = Account("tx", limit=SMALL["slab_bytes"])
    p = cls(account=acct, **SMALL)
    client, server = tcp_pair(None, "127.0.0.1")
    rd = PatternReader(server)
    rd.start()
    leases = [p.acquire(BUF) for _ in range(PER_SLAB)]
    with Sender(client, SendPolicy(force_zerocopy=True, zerocopy_threshold=0)) as tx:
        sent = leases[0]
        sent.view[:] = PATTERN.block(0, BUF)
        ticket = tx.send(sent.view)
        sent.release_when_done(ticket)
        assert ticket.zerocopy and not ticket.done and sent.in_flight
        # the default too: the return is on its way (in flight), so acquire waits for it
        lease = p.acquire(BUF, timeout=timeout)  # nobody else reaps tx: acquire must
        assert ticket.done and sent.released and lease.address == sent.address
        assert acct.usage(PINNED) == 0
        lease.view[:] = PATTERN.block(BUF, BUF)
        tx.send(lease.view).wait(30)
        lease.release()
        tx.flush(30)
        client.shutdown(socket.SHUT_WR)
    rd.finish(2 * BUF, 60)
    for x in leases[1:]:
        x.release()
    p.close()
    assert acct.usage() == 0


@requires_zerocopy
@pytest.mark.parametrize("cls", POOLS)
@pytest.mark.parametrize("timeout", [None, 30.0], ids=["default", "wait"])
def test_streaming_through_a_full_pool_never_fails(
    cls: type[BufferPool], timeout: float | None,
) -> None:
    """Every buffer is in flight again and again; the acquiring thread's reaping frees them."""
    acct = Account("tx", limit=SMALL["slab_bytes"])
    p = cls(account=acct, **SMALL)
    client, server = tcp_pair(None, "127.0.0.1")
    rd = PatternReader(server)
    rd.start()
    count = 200
    all_in_flight = 0
    with Sender(client, SendPolicy(force_zerocopy=True, zerocopy_threshold=0)) as tx:
        for i in range(count):
            if p.stats().in_flight == PER_SLAB:
                all_in_flight += 1
            lease = p.acquire(BUF, timeout=timeout)
            assert acct.usage() <= SMALL["slab_bytes"]
            lease.view[:] = PATTERN.block(i * BUF, BUF)
            lease.release_when_done(tx.send(lease.view))
        tx.flush(30)
        client.shutdown(socket.SHUT_WR)
    rd.finish(count * BUF, 60)
    st = p.stats()
    assert st.in_flight == 0 and st.outstanding == 0 and st.slabs == 1
    print(f"\n{all_in_flight} of {count} acquires found all {PER_SLAB} buffers in flight")
    assert all_in_flight > 0  # the waiting path was exercised
    p.close()
    assert acct.usage() == 0


@requires_zerocopy
def test_default_on_a_loop_thread_does_not_wait_for_that_loops_streams() -> None:
    """A lease in flight on a ZcStream is completed by its event loop; a blocking acquire on
    that loop's thread would stop the loop, so the default fails at once instead of hanging."""
    import asyncio

    from zcnet.aio import ZcStream

    acct = Account("tx", limit=SMALL["slab_bytes"])
    p = BufferPool(account=acct, **SMALL)
    client, server = tcp_pair(None, "127.0.0.1")
    outcome: list[object] = []

    async def main() -> None:
        stream = ZcStream(client, send_policy=SendPolicy(force_zerocopy=True,
                                                         zerocopy_threshold=0))
        leases = [p.acquire(BUF) for _ in range(PER_SLAB)]
        for i, lease in enumerate(leases):
            lease.view[:] = PATTERN.block(i * BUF, BUF)
            await stream.send(lease)  # in flight until the loop reaps its completion
        try:
            p.acquire(BUF)  # nothing was reaped yet: the loop has not run since
        except LimitExceeded as e:
            outcome.append(e)
        else:
            outcome.append("acquired")
        await stream.drain()
        lease = p.acquire(BUF)  # after the loop reaped: a lease is back
        lease.release()
        await stream.aclose()

    rd = PatternReader(server)
    rd.start()
    t = threading.Thread(target=asyncio.run, args=(main(),))
    t.start()
    t.join(30)
    assert not t.is_alive(), "acquire blocked the event loop"
    rd.finish(PER_SLAB * BUF, 30)
    assert len(outcome) == 1 and type(outcome[0]) is LimitExceeded
    p.close()
