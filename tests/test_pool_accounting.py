"""Thread-safe accounts (blocking charges) and pool + account bookkeeping as a state machine."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zcnet.accounting import (
    KINDS,
    MAPPED,
    PINNED,
    POOL,
    Account,
    AccountingError,
    Charge,
    LimitWaitTimeout,
    recv_accounted,
    send_accounted,
)
from zcnet.errors import LimitExceeded, TimeoutExpired
from zcnet.netns import Netns
from zcnet.pool import BufferPool, Lease, LockedFreeListPool
from zcnet.receiver import Receiver, RecvPolicy
from zcnet.sender import Sender, SendPolicy

from .conftest import requires_netns, requires_zerocopy
from .rx_helpers import PATTERN, PatternReader, sending, tcp_pair


def test_blocking_charge_waits_for_an_uncharge() -> None:
    root = Account("root", limit=100)
    held = root.charge(80, PINNED)
    got: list[Charge] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        got.append(Account("w", parent=root).charge(50, MAPPED, block=True, timeout=30))

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    held.release()  # makes room: the waiter proceeds
    t.join()
    assert got and got[0].nbytes == 50 and root.usage() == 50
    got[0].release()
    assert root.usage() == 0


def test_blocking_charge_wakes_on_a_higher_limit() -> None:
    root = Account("root", limit=10)
    child = Account("c", parent=root)
    root.charge(10, POOL)
    done = threading.Event()

    def waiter() -> None:
        child.charge(8, PINNED, block=True, timeout=30)
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    root.set_limit(30)
    t.join()
    assert done.is_set() and root.usage() == 18


def test_blocking_charge_timeout_and_never_fits() -> None:
    root = Account("root", limit=100)
    root.charge(100, PINNED)
    with pytest.raises(LimitWaitTimeout) as ei:
        root.charge(1, PINNED, block=True, timeout=0.01)
    assert isinstance(ei.value, LimitExceeded) and isinstance(ei.value, TimeoutExpired)
    with pytest.raises(LimitExceeded, match="root"):
        root.charge(1, PINNED)  # block=False: at once
    with pytest.raises(LimitExceeded):  # larger than the limit itself: no point in waiting
        Account("kid", parent=root).charge(101, PINNED, block=True)


def test_parent_must_be_thread_safe_too() -> None:
    from zcnet._core.accounting import Account as PureAccount

    with pytest.raises(TypeError):
        Account("x", parent=PureAccount("pure"))  # type: ignore[arg-type]


def test_concurrent_charges_never_exceed_limits_and_balance() -> None:
    root = Account("root", limit=10_000)
    kids = [Account(f"k{i}", limit=4_000, parent=root) for i in range(4)]
    peak = [0]
    errors: list[BaseException] = []

    def worker(acct: Account, seed: int) -> None:
        try:
            held: list[Charge] = []
            for i in range(2_000):
                n = (seed * 7919 + i * 104_729) % 900 + 1
                if acct.try_charge(n, KINDS[i % 3]):
                    held.append(Charge(acct, n, KINDS[i % 3]))
                    peak[0] = max(peak[0], root.usage())
                if len(held) > 5 or (held and i % 4 == 0):
                    held.pop(0).release()
                assert root.usage() <= 10_000 and acct.usage() <= 4_000
            for h in held:
                h.release()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k, i)) for i, k in enumerate(kids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert root.usage() == 0 and all(k.usage() == 0 for k in kids)
    assert 0 < peak[0] <= 10_000


# -- pool + accounts under any interleaving ----------------------------------------------------
# A service account with two children: "pool" (a BufferPool's slabs: idle as "pool", in-flight
# leases as "pinned") and "conn" (received chunks held mapped, charged as "mapped"). Rules acquire
# and release leases, send them (release_when_done with a fake ticket), complete tickets, and
# take and drop mapped receives. Invariants: every kind matches the model, no limit is exceeded,
# and at teardown everything balances to zero.


class FakeTicket:
    def __init__(self) -> None:
        self.done = False
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self.done:
            fn(self)
        else:
            self.callbacks.append(fn)

    def complete(self) -> None:
        self.done = True
        for fn in self.callbacks:
            fn(self)


class PoolAccountingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Account("svc", limit=2 << 20)
        self.pool_acct = Account("pool", limit=1 << 20, parent=self.root)
        self.conn = Account("conn", limit=512 * 1024, parent=self.root)
        self.pool: BufferPool | LockedFreeListPool | None = None
        self.leased: list[Lease] = []
        self.flying: list[tuple[Lease, FakeTicket]] = []
        self.chunks: list[Charge] = []

    @rule(per_thread=st.booleans())
    @precondition(lambda self: self.pool is None)
    def make_pool(self, per_thread: bool) -> None:
        cls = BufferPool if per_thread else LockedFreeListPool
        self.pool = cls(max_size=64 * 1024, slab_bytes=128 * 1024, account=self.pool_acct,
                        hugepages=False)

    @rule(size=st.integers(0, 64 * 1024))
    @precondition(lambda self: self.pool is not None)
    def acquire(self, size: int) -> None:
        assert self.pool is not None
        try:
            lease = self.pool.acquire(size)
        except LimitExceeded:
            assert self.pool_acct.headroom() is not None
            return
        lease.view[:] = bytes([size & 0xFF]) * size
        self.leased.append(lease)

    @rule(i=st.integers(0, 1000))
    @precondition(lambda self: bool(self.leased))
    def release(self, i: int) -> None:
        lease = self.leased.pop(i % len(self.leased))
        assert lease.view.tobytes() == bytes([lease.size & 0xFF]) * lease.size
        lease.release()

    @rule(i=st.integers(0, 1000))
    @precondition(lambda self: bool(self.leased))
    def send(self, i: int) -> None:
        lease = self.leased.pop(i % len(self.leased))
        ticket = FakeTicket()
        lease.release_when_done(ticket)
        self.flying.append((lease, ticket))

    @rule(i=st.integers(0, 1000), other_thread=st.booleans())
    @precondition(lambda self: bool(self.flying))
    def complete(self, i: int, other_thread: bool) -> None:
        lease, ticket = self.flying.pop(i % len(self.flying))
        if other_thread:
            t = threading.Thread(target=ticket.complete)
            t.start()
            t.join()
        else:
            ticket.complete()
        assert lease.released

    @rule(nbytes=st.integers(0, 300 * 1024))
    def receive(self, nbytes: int) -> None:
        if self.conn.try_charge(nbytes, MAPPED):
            self.chunks.append(Charge(self.conn, nbytes, MAPPED))

    @rule(i=st.integers(0, 1000))
    @precondition(lambda self: bool(self.chunks))
    def drop_chunk(self, i: int) -> None:
        self.chunks.pop(i % len(self.chunks)).release()

    @rule()
    def bad_uncharge(self) -> None:
        with pytest.raises(AccountingError):
            self.conn.uncharge(self.conn.local_usage(MAPPED) + 1, MAPPED)

    @invariant()
    def kinds_match_the_model(self) -> None:
        in_flight = sum(lease.capacity for lease, _ in self.flying)
        slab_bytes = self.pool.stats().slab_bytes if self.pool else 0
        assert self.pool_acct.usage(PINNED) == in_flight
        assert self.pool_acct.usage(POOL) == slab_bytes - in_flight
        assert self.conn.usage(MAPPED) == sum(c.nbytes for c in self.chunks)
        assert self.root.usage() == slab_bytes + self.conn.usage()
        if self.pool:
            assert self.pool.stats().outstanding == len(self.leased) + len(self.flying)

    @invariant()
    def limits_hold(self) -> None:
        for acct in (self.root, self.pool_acct, self.conn):
            assert acct.limit is None or acct.usage() <= acct.limit

    def teardown(self) -> None:
        for _, ticket in self.flying:
            ticket.complete()
        for lease in self.leased:
            lease.release()
        for c in self.chunks:
            c.release()
        if self.pool is not None:
            self.pool.close()
        assert self.root.usage() == 0
        for kind in KINDS:
            assert self.pool_acct.usage(kind) == self.conn.usage(kind) == 0


PoolAccountingMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestPoolAccounting = PoolAccountingMachine.TestCase


# -- charging a real Sender's pinned bytes and a real Receiver's mapped pages ----------------


@requires_zerocopy
def test_send_accounted_bounds_pinned_bytes() -> None:
    acct = Account("tx", limit=512 * 1024)
    block, count = 64 * 1024, 160
    client, server = tcp_pair(None, "127.0.0.1")
    rd = PatternReader(server)
    rd.start()
    peak = 0
    with Sender(client, SendPolicy(force_zerocopy=True, zerocopy_threshold=0)) as tx:
        for i in range(count):
            ticket = send_accounted(tx, PATTERN.block(i * block, block), acct, timeout=30)
            peak = max(peak, acct.usage(PINNED))
            assert acct.usage(PINNED) <= 512 * 1024
            assert ticket.zerocopy
        filler = acct.charge(acct.headroom() or 0, PINNED)  # fill the account up
        with pytest.raises(LimitExceeded):  # block=False refuses at once
            send_accounted(tx, PATTERN.block(0, block), acct, block=False)
        filler.release()
        tx.flush(timeout=30)
        assert acct.usage() == 0
        client.shutdown(socket.SHUT_WR)
    rd.finish(block * count)
    print(f"\npeak pinned {peak} bytes under a 512 KiB limit")
    assert peak > 0


@requires_netns
@requires_zerocopy
def test_recv_accounted_charges_mapped_pages(netns: Netns) -> None:
    acct = Account("rx", limit=4 << 20)
    total = 32 << 20
    client, server = tcp_pair(netns)
    mapped_bytes = 0
    off = 0
    with sending(client, total), Receiver(server, RecvPolicy(rcvlowat=512 * 1024)) as rx:
        while True:
            with recv_accounted(rx, acct, 1 << 20, timeout=30) as chunk:
                if not len(chunk):
                    break
                assert PATTERN.matches(off, chunk.view), f"corrupt bytes at {off}"
                assert acct.usage(MAPPED) == (len(chunk) if chunk.mapped else 0)
                mapped_bytes += len(chunk) if chunk.mapped else 0
                off += len(chunk)
            assert acct.usage() == 0
    assert off == total
    print(f"\n{mapped_bytes / total:.0%} of {total >> 20} MiB mapped and charged while held")
    assert mapped_bytes > 0
