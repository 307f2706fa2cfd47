"""Sender.send of single pool leases: the compiled fast path takes them (no Python frame on the
way), every byte arrives, and every lease comes back to its pool, also after a failed send.

Like the rest of tests/test_sender*.py this runs on the engine ``ZCNET_SEND_ENGINE`` names
(scripts/test-every-python.sh runs the files on both engines) and on the pure-Python
implementation, where the checks of the Python methods are left out.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.conftest import requires_zerocopy
from tests.test_sender_batch import _check, _payloads
from tests.tx_helpers import (
    VerifyingReceiver,
    handed_bytes,
    pattern_bytes,
    sigint_after,
    stalled_tcp_pair,
    tcp_pair,
    udp_pair,
)
from zcnet._accel import speedups
from zcnet.errors import SendError
from zcnet.pool import BufferPool
from zcnet.sender import Sender, SendPolicy, Ticket

FORCED = SendPolicy(force_zerocopy=True)


@pytest.fixture
def no_python_lease_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With the extension: fail the test if Sender._send_lease or a Python pool method of the
    hand-over runs (the compiled core does their work); without it, nothing to check."""
    if speedups is not None:
        def refuse(*args: object) -> None:
            raise AssertionError("a Python method of the lease path ran")

        monkeypatch.setattr(Sender, "_send_lease", refuse)
        for name in ("_begin_flights", "_end_flight", "_return"):
            monkeypatch.setattr(BufferPool, name, refuse)
    yield
    monkeypatch.undo()


@requires_zerocopy
def test_single_udp_leases_fly_and_land_in_the_compiled_core(
    no_python_lease_path: None,
) -> None:
    """Forced zero-copy UDP over loopback, one send per lease: every datagram arrives in order,
    every ticket completes, every lease is back in the pool."""
    u, rx = udp_pair()
    payloads = _payloads(300, [20_000, 65_000, 1, 33_333])
    with BufferPool() as pool, Sender(u, FORCED) as sender:
        tickets: list[Ticket] = []
        leases = []
        for p in payloads:
            lease = pool.acquire(len(p))
            lease.view[:] = p
            leases.append(lease)
            tickets.append(sender.send(lease))
        sender.flush(30)
        _check(sender, tickets, payloads)
        assert all(lease.released for lease in leases)
        st = pool.stats()
        assert st.in_flight == 0 and st.outstanding == 0
    rx.finish(payloads)


@requires_zerocopy
@pytest.mark.parametrize("policy", [FORCED, SendPolicy()], ids=["forced", "default"])
def test_single_tcp_leases_fly_and_land_in_the_compiled_core(
    policy: SendPolicy, no_python_lease_path: None,
) -> None:
    """TCP over loopback, forced zero-copy and the default policy (which falls back to copying
    sends once the kernel reports copies; those leases come back at once): the stream arrives
    whole and in order, every lease is back."""
    client, server = tcp_pair()
    rx = VerifyingReceiver(server)
    rx.start()
    sizes = [4096, 65_536, 100_000, 777]
    total = 0
    with BufferPool() as pool, Sender(client, policy) as sender:
        leases = []
        for k in range(200):
            n = sizes[k % len(sizes)]
            lease = pool.acquire(n)
            lease.view[:] = pattern_bytes(total, n)
            total += n
            leases.append(lease)
            ticket = sender.send(lease)
            assert ticket.nbytes == n
        sender.flush(30)
        assert all(lease.released for lease in leases)
        st = pool.stats()
        assert st.in_flight == 0 and st.outstanding == 0
        assert sender.stats.bytes_pending == 0
    client.close()
    rx.join(30)
    assert not rx.is_alive() and rx.error is None
    assert rx.mismatch_at is None and rx.received == total


@requires_zerocopy
def test_a_refused_lease_send_raises_and_the_lease_still_comes_back() -> None:
    """A datagram the kernel refuses (EMSGSIZE: 70000 bytes without UDP_SEGMENT) raises
    SendError naming the cause; its lease goes back to the pool anyway, and the Sender goes on
    with the next lease."""
    u, rx = udp_pair()
    with BufferPool() as pool, Sender(u, FORCED) as sender:
        big = pool.acquire(70_000)
        with pytest.raises(SendError) as info:
            sender.send(big)
        assert isinstance(info.value.__cause__, OSError)
        assert big.released
        ok = pool.acquire(1000)
        ok.view[:] = b"k" * 1000
        sender.send(ok)
        sender.flush(30)
        assert ok.released
        st = pool.stats()
        assert st.in_flight == 0 and st.outstanding == 0
    rx.finish([b"k" * 1000])


@requires_zerocopy
def test_a_lease_sent_on_a_closed_sender_stays_the_callers() -> None:
    """Nothing is sent on a closed Sender: the typed error, and the lease is still leased (the
    caller may release it or send it elsewhere)."""
    from zcnet.errors import SocketClosedError

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.1", 9))
    with BufferPool() as pool:
        sender = Sender(u, FORCED)
        sender.close()
        lease = pool.acquire(100)
        with pytest.raises(SocketClosedError):
            sender.send(lease)
        assert not lease.released
        lease.release()
        assert pool.stats().outstanding == 0


@requires_zerocopy
@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
def test_sigint_during_a_lease_send_that_sent_nothing_returns_the_lease(forced: bool) -> None:
    """SIGINT while a 1 MiB lease's send blocks on a full send buffer before any of its bytes were
    taken: KeyboardInterrupt, nothing counted for it, the Sender still usable, and the lease back
    in its pool (a lease given to send belongs to the Sender, also when the send fails); a new
    lease with the same bytes then goes, and the stream arrives whole, every byte verified."""
    client, server, offset = stalled_tcp_pair()
    with BufferPool() as pool:
        sender = Sender(client, SendPolicy(force_zerocopy=forced))
        stuck = pool.acquire(1 << 20)
        stuck.view[:] = pattern_bytes(offset, 1 << 20)
        with sigint_after(0.3), pytest.raises(KeyboardInterrupt):
            sender.send(stuck)
        assert handed_bytes(sender) == 0 and sender.failure is None and sender.pending == 0
        assert stuck.released and pool.stats().outstanding == 0
        receiver = VerifyingReceiver(server)
        receiver.start()
        again = pool.acquire(1 << 20)
        again.view[:] = pattern_bytes(offset, 1 << 20)
        ticket = sender.send(again)
        sender.flush(30)
        assert ticket.done and again.released
        st = pool.stats()
        assert st.outstanding == 0 and st.in_flight == 0
        sender.close()
    receiver.finish(offset + (1 << 20))


@requires_zerocopy
def test_a_peer_reset_during_lease_sends_leaks_no_lease() -> None:
    """The peer resets the connection while leases are being sent: the send raises
    ConnectionResetByPeer, every later send of a lease raises too, and after close every lease
    given to the Sender is back in its pool (none left in flight or out); a lease offered after
    the reset is refused before it is taken, and stays the caller's."""
    from zcnet.errors import ConnectionResetByPeer

    c, s = tcp_pair()
    with BufferPool() as pool:
        sender = Sender(c, FORCED)
        first = pool.acquire(64 * 1024)  # (taken at once: the peer does not read)
        first.view[:] = pattern_bytes(0, 64 * 1024)
        t1 = sender.send(first)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # SO_LINGER 0 + close: an RST
        sent = [first]
        with pytest.raises(ConnectionResetByPeer):
            for k in range(100):
                lease = pool.acquire(200_000)
                lease.view[:] = pattern_bytes(k, 200_000)
                sent.append(lease)
                sender.send(lease)
                time.sleep(0.01)
        late = pool.acquire(1000)
        with pytest.raises(ConnectionResetByPeer):
            sender.send(late)
        assert not late.released  # refused before it was taken: still the caller's
        late.release()
        sender.close()
        assert t1.done or t1.error is not None
        assert all(lease.released for lease in sent)
        st = pool.stats()
        assert st.outstanding == 0 and st.in_flight == 0
