"""Multi-threaded stress of both pools, through real loopback Senders, with leak checks.

Worker threads acquire leases, fill them with a verifiable stream pattern, send them through a
zcnet Sender (forced MSG_ZEROCOPY, so leases really go in flight and return on completion) over a
loopback TCP connection whose reader checks every byte, and hand other leases to a releaser
thread (cross-thread release). Afterwards every lease is back, the accounts are zero, and no
slab mapping or file descriptor is left behind.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import threading
from collections.abc import Callable

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet.accounting import MAPPED, PINNED, POOL, Account
from zcnet.pool import BufferPool, Lease, LockedFreeListPool
from zcnet.sender import Sender, SendPolicy

from .conftest import requires_zerocopy

THREADS = 4
ITERATIONS = 150
MAX_LEASE = 128 * 1024
PATTERN = StreamPattern(max_block=MAX_LEASE)


def maps_lines() -> list[str]:
    with open("/proc/self/maps") as f:
        return f.read().splitlines()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def mapped(addr: int, lines: list[str]) -> bool:
    for line in lines:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False


def reader(sock: socket.socket, total: list[int], errors: list[BaseException]) -> None:
    try:
        buf = bytearray(256 * 1024)
        got = 0
        with sock:
            while True:
                n = sock.recv_into(buf)
                if n == 0:
                    break
                assert PATTERN.matches(got, memoryview(buf)[:n]), f"corrupt bytes at {got}"
                got += n
        total.append(got)
    except BaseException as e:
        errors.append(e)


def run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@requires_zerocopy
@pytest.mark.parametrize("pool_cls", [BufferPool, LockedFreeListPool])
def test_threads_send_and_release_leases(pool_cls: type[BufferPool]) -> None:
    # A first, short round lets glibc create its per-thread malloc arenas and cache thread
    # stacks (mappings that stay for the life of the process); the second round is measured.
    stress_round(pool_cls, ITERATIONS // 10)
    maps_before, fds_before = len(maps_lines()), fd_count()
    addresses, slabs = stress_round(pool_cls, ITERATIONS)
    after = maps_lines()
    assert not any(mapped(a, after) for a in addresses), "a slab is still mapped"
    print(f"maps lines {maps_before} -> {len(after)}, fds {fds_before} -> {fd_count()}")
    # exact: no address any lease had is mapped any more. Loose: the line count; glibc may add
    # malloc arenas or cached thread stacks (two lines each) on its own, but leaking the slabs
    # would add at least one line per slab.
    assert len(after) - maps_before < slabs
    assert fd_count() == fds_before


def stress_round(pool_cls: type[BufferPool], iterations: int) -> tuple[set[int], int]:
    """One round; returns the addresses of every lease handed out and the number of slabs."""
    root = Account("root", limit=256 << 20)
    pool_acct = Account("pool", parent=root)
    pool = pool_cls(max_size=MAX_LEASE, slab_bytes=2 << 20, account=pool_acct)
    handoff: queue.Queue[tuple[Lease, int] | None] = queue.Queue()
    errors: list[BaseException] = []
    received: list[int] = []
    sent_total: list[int] = []
    addresses: set[int] = set()
    readers: list[threading.Thread] = []
    senders: list[Sender] = []

    lst = socket.create_server(("127.0.0.1", 0), backlog=THREADS)
    for _ in range(THREADS):
        cli = socket.create_connection(lst.getsockname())
        srv, _ = lst.accept()
        senders.append(Sender(cli, SendPolicy(force_zerocopy=True, zerocopy_threshold=0)))
        t = threading.Thread(target=reader, args=(srv, received, errors))
        t.start()
        readers.append(t)
    lst.close()

    def releaser() -> None:
        try:
            while (item := handoff.get()) is not None:
                lease, seed = item
                assert lease.view.tobytes() == PATTERN.block(seed, len(lease)).tobytes()
                lease.release()
        except BaseException as e:
            errors.append(e)

    def worker(index: int) -> None:
        rng = random.Random(index)
        sender = senders[index]
        offset = 0
        try:
            for i in range(iterations):
                size = rng.choice((4096, 10_000, 65536, rng.randrange(1, MAX_LEASE + 1)))
                lease = pool.acquire(size)
                addresses.add(lease.address)
                if i % 3 == 2:  # filled and handed to another thread to release
                    seed = rng.randrange(1 << 20)
                    lease.view[:] = PATTERN.block(seed, size)
                    handoff.put((lease, seed))
                    continue
                lease.view[:] = PATTERN.block(offset, size)
                ticket = sender.send(lease.view)
                lease.release_when_done(ticket)
                offset += size
                if i % 7 == 0:
                    sender.poll()
            sender.flush(timeout=30)
            sent_total.append(offset)
        except BaseException as e:
            errors.append(e)
        finally:
            sender.close()

    rel = threading.Thread(target=releaser)
    rel.start()
    run_threads([lambda i=i: worker(i) for i in range(THREADS)])  # type: ignore[misc]
    handoff.put(None)
    rel.join()
    for t in readers:
        t.join()
    if errors:
        raise errors[0]

    assert sorted(received) == sorted(sent_total) and sum(received) > 0
    st = pool.stats()
    print(f"\n{pool_cls.__name__}: {st}")
    assert st.outstanding == 0 and st.in_flight == 0
    assert st.acquires == st.releases == THREADS * iterations
    if pool_cls is BufferPool:
        assert st.cross_thread_releases >= THREADS * (iterations // 3)
    assert pool_acct.usage(PINNED) == 0 and pool_acct.usage(MAPPED) == 0
    assert pool_acct.usage(POOL) == st.slab_bytes == root.usage()
    pool.close()
    assert root.usage() == 0

    return addresses, st.slabs
