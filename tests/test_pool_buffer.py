"""A pool Lease as a buffer, under every lifetime misuse (docs/ARCHITECTURE.md, invariant 3).

With the compiled extension a Lease is a buffer on every Python version (a ``BufferBase`` over
its block, exports counted exactly); in the pure-Python implementation it is one from Python 3.12
on (PEP 688, exported through its view). The rule is the same in both: no lease goes back to
the pool, by hand or by its ticket's completion, while any export of its memory is alive; the
lease's own ``view`` does not count and dies on return. Tests that need the buffer protocol skip,
with the reason, where the active implementation has none (pure Python on 3.11).
"""

from __future__ import annotations

import gc
import hashlib
import io
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import zcnet
from tests.conftest import requires_zerocopy
from tests.rx_helpers import PATTERN, sending, tcp_pair
from tests.tx_helpers import PATTERN as TX_PATTERN
from tests.tx_helpers import PERIOD, VerifyingReceiver
from tests.tx_helpers import tcp_pair as tx_tcp_pair
from zcnet._accel import speedups
from zcnet.accounting import Account
from zcnet.errors import BufferLifetimeError, LimitWaitTimeout
from zcnet.pool import BufferPool, Lease, LockedFreeListPool
from zcnet.receiver import Receiver, RecvPolicy
from zcnet.sender import Sender, SendPolicy

from .test_pool import SMALL, FakeTicket

#: Whether a Lease exports a buffer itself in the active implementation.
LEASE_IS_BUFFER = speedups is not None or sys.version_info >= (3, 12)

lease_is_buffer = pytest.mark.skipif(
    not LEASE_IS_BUFFER,
    reason="the pure-Python Lease is a buffer from Python 3.12 on (PEP 688); on 3.11 it is one "
           f"only with the compiled extension ({zcnet.implementation().reason})")
compiled_only = pytest.mark.skipif(
    speedups is None, reason=f"checks the compiled extension: {zcnet.implementation().reason}")
python_only = pytest.mark.skipif(
    speedups is not None,
    reason="checks the pure-Python implementation's probe of CPython's managed buffer; the "
           "compiled one reads the counters in C (zcnet/_ext/views.c)")

MiB = 1 << 20
POOLS = [BufferPool, LockedFreeListPool]

Make = Callable[[Lease], Any]


@pytest.fixture(params=POOLS, ids=["per-thread", "locked"])
def pool(request: pytest.FixtureRequest) -> Iterator[BufferPool | LockedFreeListPool]:
    p = request.param(**SMALL)
    yield p
    p.close(force=True)


def _bytes(offset: int, n: int) -> bytes:
    """Bytes ``offset .. offset+n`` of the transmit tests' pattern stream (n <= PERIOD)."""
    start = offset % PERIOD
    return (TX_PATTERN + TX_PATTERN)[start:start + n]


def _as_buffer(lease: Lease) -> Any:
    """The lease as a buffer argument (typed Any: it is one only where LEASE_IS_BUFFER)."""
    return lease


def _exports() -> dict[str, Make]:
    """Objects that hold an export of a lease's memory (made from the lease or from its view);
    each sees the lease's bytes from offset 0 or 64 to the end."""
    cases: dict[str, Make] = {
        "slice of view": lambda lease: lease.view[64:],
        "numpy.frombuffer(view)": lambda lease: np.frombuffer(lease.view, np.uint8),
    }
    if LEASE_IS_BUFFER:
        cases.update({
            "memoryview(lease)": lambda lease: memoryview(_as_buffer(lease)),
            "memoryview(memoryview(lease))[64:]": (
                lambda lease: memoryview(memoryview(_as_buffer(lease)))[64:]),
            "numpy.frombuffer(lease)": lambda lease: np.frombuffer(_as_buffer(lease), np.uint8),
            "numpy slice of numpy.frombuffer(lease)": (
                lambda lease: np.frombuffer(_as_buffer(lease), np.uint8)[64:]),
            "cast of memoryview(lease)": lambda lease: memoryview(_as_buffer(lease)).cast("B"),
        })
    return cases


EXPORTS = _exports()


def _seen(export: Any) -> bytes:
    with memoryview(export) as m:
        return m.tobytes()


def _tail(data: bytes, export: Any) -> bytes:
    """The bytes of ``data`` that ``export`` (made by one of EXPORTS) should see."""
    return data[len(data) - len(_seen(export)):]


@lease_is_buffer
def test_lease_is_a_writable_buffer_and_release_waits_for_its_exports() -> None:
    pool = BufferPool()
    lease = pool.acquire(100_000)
    buf = _as_buffer(lease)
    data = PATTERN.block(7, 100_000).tobytes()
    assert io.BytesIO(data).readinto(buf) == 100_000
    assert lease.view.tobytes() == data
    assert bytes(buf) == data
    assert hashlib.sha256(buf).digest() == hashlib.sha256(data).digest()
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr.flags.writeable and arr.tobytes() == data
    arr[0] ^= 0xFF  # writes through to the lease
    assert lease.view[0] == data[0] ^ 0xFF
    del arr
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"0123456789")
        assert b.recv_into(buf, 10) == 10
    assert lease.view[:10].tobytes() == b"0123456789"
    m = memoryview(buf)
    assert not m.readonly and m.nbytes == 100_000 and m is not lease.view
    with pytest.raises(BufferLifetimeError, match="still in use"):
        lease.release()
    assert not lease.released
    m.release()  # released but still referenced: no longer an export
    lease.release()
    assert lease.released and m is not None
    with pytest.raises(BufferLifetimeError):
        memoryview(buf)
    with pytest.raises(BufferLifetimeError):
        bytes(buf)
    pool.close()


@lease_is_buffer
def test_sendall_and_recv_into_a_lease_over_a_socket() -> None:
    total = 3 * MiB + 5
    with BufferPool(max_size=4 * MiB) as pool:
        lease = pool.acquire(total)
        lease.view[:] = _bytes(0, total)
        a, b = socket.socketpair()
        got = pool.acquire(total)
        gbuf = _as_buffer(got)
        n = 0

        def reader() -> None:
            nonlocal n
            with memoryview(gbuf) as dst:
                while n < total and (k := b.recv_into(dst[n:])):
                    n += k

        t = threading.Thread(target=reader)
        t.start()
        with a, b:
            a.sendall(_as_buffer(lease))
            t.join(30)
        assert n == total and got.view.tobytes() == _bytes(0, total)
        lease.release()
        got.release()


@pytest.mark.skipif(LEASE_IS_BUFFER, reason="the Lease is a buffer in this implementation")
def test_pure_python_lease_on_311_is_not_a_buffer() -> None:
    with BufferPool(**SMALL) as pool, pool.acquire(4096) as lease:  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            memoryview(_as_buffer(lease))
        assert lease.view.nbytes == 4096  # the documented way there


@compiled_only
def test_compiled_lease_counts_its_exports_and_pins_its_slab() -> None:
    assert speedups is not None
    with BufferPool(**SMALL) as pool:  # type: ignore[arg-type]
        lease = pool.acquire(10_000)
        assert isinstance(lease, speedups.BufferBase) and lease.nbytes == 10_000
        assert lease.exports == 0  # the view is made on first use
        view = lease.view
        assert lease.exports == 1  # held by the view's managed buffer, whatever derives from it
        m = memoryview(_as_buffer(lease))
        assert lease.exports == 2
        with pytest.raises(ValueError, match="not a view"):
            speedups.end_lease(lease, memoryview(bytearray(1)))
        with pytest.raises(TypeError):
            speedups.end_lease(view, view)  # type: ignore[arg-type]
        assert not speedups.end_lease(lease, view)  # in use: nothing changed
        assert not lease._ended and view[0] == 0
        del m
        lease.release()
        assert lease._finalized and lease.exports == 0
        with pytest.raises(BufferLifetimeError, match="already ended"):
            speedups.end_lease(lease, None)


@pytest.mark.parametrize("make", EXPORTS.values(), ids=EXPORTS.keys())
def test_export_alive_at_release_is_refused_and_nothing_changes(
    pool: BufferPool | LockedFreeListPool, make: Make
) -> None:
    lease = pool.acquire(8192)
    view = lease.view
    view[:] = _bytes(1, 8192)
    before = pool.stats()
    export = make(lease)
    for _ in range(2):  # refused as often as tried
        with pytest.raises(BufferLifetimeError, match="still in use"):
            lease.release()
    assert not lease.released and not lease.in_flight and lease.view is view
    assert pool.stats() == before
    other = pool.acquire(8192)  # the block is not handed out meanwhile
    assert other.address != lease.address
    other.release()
    view[:] = _bytes(2, 8192)
    assert _seen(export) == _tail(_bytes(2, 8192), export)
    del export
    lease.release()
    assert lease.released
    with pytest.raises(ValueError):
        view[0]  # the pool released the lease's view
    again = pool.acquire(8192)  # the same block (LIFO), with the bytes last written
    assert again.address == lease.address and bytes(again.view) == _bytes(2, 8192)
    again.release()


@pytest.mark.parametrize("make", EXPORTS.values(), ids=EXPORTS.keys())
@pytest.mark.parametrize("cls", POOLS, ids=["per-thread", "locked"])
def test_export_alive_at_ticket_completion_holds_the_lease_back(
    cls: type[BufferPool], make: Make
) -> None:
    acct = Account("svc", limit=SMALL["slab_bytes"])  # one slab: 4 buffers of 64 KiB
    p = cls(account=acct, **SMALL)
    leases = [p.acquire(65536) for _ in range(4)]
    held = leases[0]
    held.view[:] = _bytes(3, 65536)
    export = make(held)
    ticket = FakeTicket()
    held.release_when_done(ticket)
    ticket.complete()
    assert held.held_back and not held.released
    with pytest.raises(BufferLifetimeError):
        held.release()
    with pytest.raises(LimitWaitTimeout):  # not handed out while the export lives
        p.acquire(65536, timeout=0)
    assert _seen(export) == _tail(_bytes(3, 65536), export)
    del export
    again = p.acquire(65536, timeout=0)  # the export is gone: taken back
    assert again.address == held.address and held.released
    with pytest.raises(BufferLifetimeError):
        _ = held.view
    for lease in [again, *leases[1:]]:
        lease.release()
    p.close()
    assert acct.usage() == 0


def test_lease_view_does_not_count_and_dies_on_return(
    pool: BufferPool | LockedFreeListPool,
) -> None:
    lease = pool.acquire(5000)
    view = lease.view
    assert lease.view is view  # one view per lease
    view[:] = _bytes(4, 5000)
    lease.release()  # the lease's own view is no export
    with pytest.raises(ValueError):
        view.tobytes()
    with pytest.raises(BufferLifetimeError):
        _ = lease.view
    with pytest.raises(BufferLifetimeError, match="twice"):
        lease.release()


@lease_is_buffer
def test_memoryview_of_lease_counts_lease_view_does_not(
    pool: BufferPool | LockedFreeListPool,
) -> None:
    lease = pool.acquire(6000)
    buf = _as_buffer(lease)
    m = memoryview(buf)
    assert m is not lease.view and m.nbytes == lease.view.nbytes == 6000
    m[:] = _bytes(5, 6000)
    assert lease.view.tobytes() == _bytes(5, 6000)  # the same memory
    with pytest.raises(BufferLifetimeError):
        lease.release()
    nested = [memoryview(m)[k:] for k in range(3)]  # nested views of the export
    m.release()  # m is gone, the views made from it still hold its export
    with pytest.raises(BufferLifetimeError):
        lease.release()
    assert [x[0] for x in nested] == list(_bytes(5, 3))
    for x in nested:
        x.release()  # released, still referenced: exactly nothing is exported now
    lease.release()
    assert lease.released and nested and m is not None


@lease_is_buffer
def test_exports_after_release_raise_and_never_touch_the_memory() -> None:
    pool = BufferPool(**SMALL)  # type: ignore[arg-type]
    lease = pool.acquire(4096)
    buf = _as_buffer(lease)
    view = lease.view
    lease.release()
    pool.close()  # the slab is unmapped: nothing may reach it any more
    for use in (memoryview, bytes, hashlib.sha256, lambda b: np.frombuffer(b, np.uint8)):
        with pytest.raises(BufferLifetimeError):
            use(buf)
    with pytest.raises(ValueError):
        view[0]
    with pytest.raises(BufferLifetimeError):
        _ = lease.view
    a, b = socket.socketpair()
    with a, b, pytest.raises(BufferLifetimeError):
        a.sendall(buf)


@pytest.mark.parametrize("make", EXPORTS.values(), ids=EXPORTS.keys())
def test_close_under_a_live_export_leaves_the_slab_mapped(make: Make) -> None:
    pool = BufferPool(**SMALL)  # type: ignore[arg-type]
    lease = pool.acquire(4096)
    lease.view[:] = _bytes(6, 4096)
    export = make(lease)
    with pytest.raises(BufferLifetimeError, match="stay mapped"):
        pool.close(force=True)
    assert pool.closed
    assert _seen(export) == _tail(_bytes(6, 4096), export)  # still mapped: no SIGBUS
    with memoryview(export) as m:
        m[-1:] = b"\0"  # and writable
    del export, lease
    gc.collect()  # the last references go: the slab is unmapped by its mmap object


# -- with zcnet's Sender and Receiver, over real sockets, every byte verified ------------------

def _fill(lease: Lease, data: bytes) -> None:
    """Write ``data`` into ``lease`` through an export of the lease where it is a buffer."""
    if LEASE_IS_BUFFER:
        with memoryview(_as_buffer(lease)) as m:
            m[:] = data
    else:
        lease.view[:] = data


@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
def test_leases_filled_through_exports_and_sent_by_a_sender(forced: bool) -> None:
    client, server = tx_tcp_pair()
    receiver = VerifyingReceiver(server)
    receiver.start()
    sizes = [4096, 200_000, 2 * MiB, 65536, 1]
    with (BufferPool(max_size=4 * MiB, hugepages=False) as pool,
          Sender(client, SendPolicy(force_zerocopy=forced)) as sender):
        off = 0
        leases: list[Lease] = []
        for n in sizes:
            lease = pool.acquire(n)
            _fill(lease, _bytes(off, n))
            off += n
            leases.append(lease)
            sender.send(lease)
        sender.flush(10)
        assert all(lease.released for lease in leases)
        assert pool.stats().outstanding == 0
    receiver.finish(sum(sizes))


@requires_zerocopy
@pytest.mark.parametrize("make", EXPORTS.values(), ids=EXPORTS.keys())
def test_a_lease_sent_with_a_live_export_is_held_back_until_it_dies(make: Make) -> None:
    client, server = tx_tcp_pair()
    receiver = VerifyingReceiver(server)
    receiver.start()
    sizes = [2 * MiB, 1 * MiB]
    with (BufferPool(max_size=4 * MiB, hugepages=False) as pool,
          Sender(client, SendPolicy(force_zerocopy=True)) as sender):
        off = 0
        pairs: list[tuple[Lease, Any]] = []
        for n in sizes:
            lease = pool.acquire(n)
            _fill(lease, _bytes(off, n))
            off += n
            pairs.append((lease, make(lease)))  # alive across the send and its completion
            ticket = sender.send(lease)
            assert ticket.zerocopy
            with pytest.raises(BufferLifetimeError):
                lease.release()  # the Sender owns it now
        sender.flush(10)
        off = 0
        for lease, export in pairs:
            assert lease.held_back and not lease.released
            assert _seen(export) == _tail(_bytes(off, lease.size), export)
            off += lease.size
        assert pool.stats().held_back == 2
        del export, pairs[:]
    # close() took the held-back leases back: their exports are gone
    assert lease.released and pool.closed
    receiver.finish(sum(sizes))


@lease_is_buffer
def test_a_lease_sent_as_a_plain_buffer_stays_leased_until_the_export_ends() -> None:
    client, server = tx_tcp_pair()
    receiver = VerifyingReceiver(server)
    receiver.start()
    with (BufferPool(max_size=4 * MiB, hugepages=False) as pool,
          Sender(client, SendPolicy(force_zerocopy=True)) as sender):
        lease = pool.acquire(1 * MiB)
        _fill(lease, _bytes(0, 1 * MiB))
        m = memoryview(_as_buffer(lease))
        ticket = sender.send(m)  # any buffer: the ticket holds an export of ``m``
        with pytest.raises(BufferLifetimeError):
            lease.release()
        sender.flush(10)
        assert ticket.done
        with pytest.raises(BufferLifetimeError):
            lease.release()  # ``m`` itself is still an export
        m.release()
        lease.release()
    receiver.finish(1 * MiB)


@pytest.mark.parametrize("as_buffer", [False, True], ids=["lease.view", "lease"])
def test_recv_into_a_lease(as_buffer: bool) -> None:
    if as_buffer and not LEASE_IS_BUFFER:
        pytest.skip("the pure-Python Lease is a buffer from Python 3.12 on (PEP 688)")
    total = 4 * MiB + 99
    client, server = tcp_pair(None, host="127.0.0.1")
    off = 0
    with (BufferPool(max_size=1 * MiB) as pool, Receiver(server, RecvPolicy()) as rx,
          sending(client, total, zerocopy=False, block=100_003)):
        while True:
            with pool.acquire(300_000) as lease:
                n = rx.recv_into(_as_buffer(lease) if as_buffer else lease.view, timeout=30)
                if n == 0:
                    break
                assert PATTERN.matches(off, lease.view[:n])
                off += n
        assert pool.stats().outstanding == 0
    assert off == total


@lease_is_buffer
def test_socket_recv_into_a_lease_with_a_slice_alive() -> None:
    a, b = socket.socketpair()
    with a, b, BufferPool(**SMALL) as pool:  # type: ignore[arg-type]
        lease = pool.acquire(50_000)
        tail = lease.view[40_000:]  # an export of its memory, made before the receive
        data = _bytes(11, 50_000)
        a.sendall(data)
        got = 0
        while got < 50_000:
            got += b.recv_into(memoryview(_as_buffer(lease))[got:])
        assert bytes(_as_buffer(lease)) == data and tail.tobytes() == data[40_000:]
        with pytest.raises(BufferLifetimeError):
            lease.release()
        tail.release()
        lease.release()


def test_a_lease_sent_by_copy_while_exported_is_held_back_not_refused() -> None:
    """Sender.send(lease) that copies (below the threshold) while the caller holds an export of
    the lease's memory: the send succeeds and the lease is held back until the export ends."""
    client, server = tx_tcp_pair()
    receiver = VerifyingReceiver(server)
    receiver.start()
    with BufferPool(max_size=4 * MiB, hugepages=False) as pool, Sender(client) as sender:
        lease = pool.acquire(4096)
        _fill(lease, _bytes(0, 4096))
        export = lease.view[100:200]  # a slice of the lease's view: an export of its memory
        ticket = sender.send(lease)  # 4 KiB: below the threshold, a copy, done at once
        assert ticket.done and not ticket.zerocopy
        assert lease.held_back and not lease.released
        assert bytes(export) == _bytes(0, 4096)[100:200]
        export.release()
        del export
    assert lease.released  # close() took it back: its export is gone
    receiver.finish(4096)
