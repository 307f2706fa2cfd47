"""Sender safety: interrupted sends, use from two threads, half-close, pool leases.

Real loopback TCP and UDP sockets; a real SIGINT interrupts a real blocking ``send(2)``.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import pytest

from tests.conftest import requires_zerocopy
from tests.tx_helpers import (
    DatagramReceiver,
    VerifyingReceiver,
    handed_bytes,
    msg_zerocopy_only,
    pattern_bytes,
    sigint_after,
    stalled_tcp_pair,
    tcp_pair,
)
from zcnet.errors import (
    BufferLifetimeError,
    ConcurrentUseError,
    InvalidCompletionError,
    SendError,
    SocketClosedError,
    UnsupportedSocketError,
)
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_SNDBUFFORCE
from zcnet.pool import BufferPool
from zcnet.sender import Sender, SendPolicy

MiB = 1 << 20
BIG = 256 * MiB


@pytest.fixture
def big() -> bytearray:
    return pattern_bytes(0, BIG)


@requires_zerocopy
@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
@pytest.mark.parametrize("peer_reads", [True, False], ids=["peer-reads", "peer-gone"])
def test_sigint_during_blocking_send_breaks_the_sender(
    big: bytearray, forced: bool, peer_reads: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGINT while a 256 MiB send blocks on a peer that is not reading: the send raises
    KeyboardInterrupt, the next send raises, the tracker stays in step with the kernel (the
    bytes the peer gets are exactly those the Sender counted, all verified, nothing after the
    gap) and no ticket is left pending after close."""
    caplog.set_level(logging.WARNING, logger="zcnet")
    client, server = tcp_pair()
    policy = SendPolicy(force_zerocopy=forced, drain_timeout=1.0)
    sender = Sender(client, policy)
    small = sender.send(pattern_bytes(0, 100_000))  # a whole message before the big one
    offset = 100_000
    big[:] = pattern_bytes(offset, BIG)
    with sigint_after(0.3), pytest.raises(KeyboardInterrupt):
        sender.send(big)
    handed = handed_bytes(sender)
    assert offset < handed < offset + BIG
    assert sender.failure is not None and "broken" in str(sender.failure)
    with pytest.raises(SendError, match="broken"):
        sender.send(b"y" * 50_000)
    with pytest.raises(SendError, match="broken"):
        sender.send(b"z")
    receiver = VerifyingReceiver(server)
    if peer_reads:
        receiver.start()
    t0 = time.monotonic()
    sender.close()
    assert sender.pending == 0  # every ticket done: drained, or released by the reset
    assert small.done
    if peer_reads:
        receiver.finish(handed)  # exactly the bytes counted, every one verified
    else:
        assert time.monotonic() - t0 >= 0.9  # it gave the peer drain_timeout first
        receiver.start()
        receiver.join(30)
        assert receiver.mismatch_at is None  # what arrived before the reset is the pattern
        assert receiver.received <= handed
        assert isinstance(receiver.error, ConnectionResetError)
    assert "InvalidCompletion" not in caplog.text
    assert "never completed" not in caplog.text


@requires_zerocopy
def test_exception_while_waiting_keeps_the_sender_usable() -> None:
    """An exception from a signal handler while the Sender sleeps waiting for completions (no
    send in progress) leaves the stream whole: the next send goes on."""
    client, server = tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 32 * MiB)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with Sender(client, SendPolicy(force_zerocopy=True)) as sender:
        sender.send(pattern_bytes(0, 3 * MiB))  # fits the send buffer; the peer reads nothing

        def interrupt(*_: object) -> None:
            raise RuntimeError("from a signal handler")

        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(RuntimeError):
                sender.flush(10)  # sleeps in poll(2): completions wait for the peer
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert sender.failure is None
        receiver = VerifyingReceiver(server)
        receiver.start()
        sender.send(pattern_bytes(3 * MiB, 3 * MiB))
        sender.flush(10)
    receiver.finish(6 * MiB)


def test_second_thread_gets_concurrent_use_error(big: bytearray) -> None:
    client, server = tcp_pair()
    sender = Sender(client)
    errors: list[BaseException] = []

    def blocked_send() -> None:
        try:
            sender.send(memoryview(big)[:64 * MiB])  # blocks: the peer is not reading yet
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=blocked_send)
    t.start()
    time.sleep(0.3)
    for call in (lambda: sender.send(b"x" * 100), lambda: sender.flush(1), sender.poll,
                 lambda: sender.send_batch([b"x"])):
        with pytest.raises(ConcurrentUseError):
            call()
    receiver = VerifyingReceiver(server)
    receiver.start()
    t.join(60)
    assert not t.is_alive() and not errors
    sender.close()
    receiver.finish(64 * MiB)


def test_done_callback_that_sends_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    client, server = tcp_pair()
    receiver = VerifyingReceiver(server)
    receiver.start()
    caught: list[BaseException] = []
    with Sender(client, SendPolicy(force_zerocopy=True)) as sender:
        ticket = sender.send(pattern_bytes(0, 1 * MiB))

        def resend(_t: object) -> None:
            try:
                sender.send(b"never")
            except ConcurrentUseError as e:
                caught.append(e)

        ticket.add_done_callback(resend)
        sender.flush(10)
    assert ticket.done
    assert len(caught) == 1 or (ticket.done and not caught and not ticket.zerocopy)
    receiver.finish(1 * MiB)


@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
def test_shutdown_half_closes_against_a_plain_peer(forced: bool) -> None:
    """The peer (a plain socket) reads every byte, then end-of-file; it can still answer."""
    client, server = tcp_pair()
    sizes = [5_000, 300_000, 3 * MiB + 7, 64 * 1024, 1]
    total = sum(sizes)
    result: dict[str, object] = {}

    def peer() -> None:
        got = bytearray()
        while True:
            chunk = server.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        result["ok"] = got == pattern_bytes(0, total)
        result["n"] = len(got)
        server.sendall(b"reply after EOF")
        server.close()

    t = threading.Thread(target=peer)
    t.start()
    sender = Sender(client, SendPolicy(force_zerocopy=forced))
    off = 0
    for n in sizes:
        sender.send(pattern_bytes(off, n))
        off += n
    sender.shutdown()
    sender.shutdown()  # idempotent
    with pytest.raises(SocketClosedError, match="shut down"):
        sender.send(b"late")
    t.join(30)
    assert result == {"ok": True, "n": total}
    reply = b""
    while len(reply) < 15:
        reply += client.recv(64)
    assert reply == b"reply after EOF"
    sender.flush(10)
    sender.close()


def test_shutdown_of_udp_is_unsupported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        with Sender(u) as sender, pytest.raises(UnsupportedSocketError):
            sender.shutdown()


@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
def test_send_lease_returns_it_to_the_pool(forced: bool) -> None:
    client, server = tcp_pair()
    receiver = VerifyingReceiver(server)
    receiver.start()
    sizes = [4096, 200_000, 2 * MiB]
    with (BufferPool(max_size=4 * MiB, hugepages=False) as pool,
          Sender(client, SendPolicy(force_zerocopy=forced)) as sender):
        off = 0
        leases = []
        for n in sizes:
            lease = pool.acquire(n)
            lease.view[:] = pattern_bytes(off, n)
            off += n
            leases.append(lease)
            sender.send(lease)
        sender.flush(10)
        assert all(lease.released for lease in leases)
        assert pool.stats().outstanding == 0
    receiver.finish(sum(sizes))


def test_send_batch_of_leases_over_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        dgrams = DatagramReceiver(r)
        dgrams.start()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        expected = [bytes(pattern_bytes(k * 1000, 1000 + 7000 * (k % 4))) for k in range(20)]
        with BufferPool(max_size=1 * MiB, hugepages=False) as pool:
            leases = []
            for data in expected:
                lease = pool.acquire(len(data))
                lease.view[:] = data
                leases.append(lease)
            with Sender(u, SendPolicy(force_zerocopy=True, zerocopy_threshold=4096)) as sender:
                tickets = sender.send_batch(leases)
                sender.flush(10)
            assert all(t.done and t.error is None for t in tickets)
            assert all(lease.released for lease in leases)
        dgrams.finish(expected)


def test_send_batch_of_leases_from_two_pools_and_a_lease_twice() -> None:
    """Leases of two pools in one batch each go back to their own pool; a lease given twice is
    sent twice, is in flight once, and the batch raises BufferLifetimeError after sending."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        dgrams = DatagramReceiver(r)
        dgrams.start()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        expected = [bytes(pattern_bytes(k * 1000, 9000 + k)) for k in range(6)]
        with BufferPool(hugepages=False) as one, BufferPool(hugepages=False) as two:
            leases = []
            for k, data in enumerate(expected[:4]):
                lease = (one if k % 2 else two).acquire(len(data))
                lease.view[:] = data
                leases.append(lease)
            twice = one.acquire(len(expected[4]))
            twice.view[:] = expected[4]
            policy = SendPolicy(force_zerocopy=True, zerocopy_threshold=4096)
            with Sender(u, policy) as sender:
                tickets = sender.send_batch(leases)
                seen: list[bool] = []  # a done callback runs after the lease is back
                tickets[0].add_done_callback(lambda _t: seen.append(leases[0].released))
                with pytest.raises(BufferLifetimeError):
                    sender.send_batch([twice, twice])
                sender.flush(10)
            assert all(t.done and t.error is None for t in tickets) and seen == [True]
            assert all(lease.released for lease in leases)
            assert two.stats().outstanding == 0
            # its first completion found the second send's export of it alive: held back (out
            # of the pool) until that is gone, never handed out twice
            assert not twice.in_flight and (twice.released or twice.held_back)
        dgrams.finish([*expected[:4], expected[4], expected[4]])


@requires_zerocopy
@msg_zerocopy_only("a MSG_ZEROCOPY send behind its back cannot reach the ring's counter")
def test_a_counter_out_of_step_stops_the_sender() -> None:
    """After an impossible completion nothing is released and nothing more is sent: the
    tracker can no longer be trusted to say which buffers the kernel still reads."""
    client, server = tcp_pair()
    with server, Sender(client, SendPolicy(force_zerocopy=True)) as sender:
        client.send(bytes(pattern_bytes(0, 50_000)), MSG_ZEROCOPY)  # behind the Sender's back
        got = bytearray()
        while len(got) < 50_000:
            got += server.recv(1 << 20)
        assert got == pattern_bytes(0, 50_000)
        deadline = time.monotonic() + 5
        with pytest.raises(InvalidCompletionError):
            while time.monotonic() < deadline:
                sender.poll()
                time.sleep(0.01)
        assert isinstance(sender.failure, InvalidCompletionError)
        with pytest.raises(InvalidCompletionError):
            sender.send(b"x" * 100_000)


@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
def test_sigint_during_a_one_call_send_that_sent_nothing(forced: bool) -> None:
    """SIGINT while a 1 MiB send (one call: the compiled fast path when it is active) blocks on a
    full send buffer before any of its bytes were taken: it raises KeyboardInterrupt and the
    Sender stays usable (nothing of that send reached the kernel, nothing is counted for it);
    everything sent before and after arrives, every byte verified."""
    client, server, offset = stalled_tcp_pair()
    sender = Sender(client, SendPolicy(force_zerocopy=forced))
    with sigint_after(0.3), pytest.raises(KeyboardInterrupt):
        sender.send(pattern_bytes(offset, MiB))
    assert handed_bytes(sender) == 0 and sender.failure is None and sender.pending == 0
    receiver = VerifyingReceiver(server)
    receiver.start()
    ticket = sender.send(pattern_bytes(offset, MiB))  # the same bytes again, now taken
    sender.flush(30)
    assert ticket.done
    sender.close()
    receiver.finish(offset + MiB)


def test_compiled_send_path_is_installed_unless_overridden() -> None:
    """With the extension, ``Sender.send`` of an instance is the compiled fast path (which calls
    the Python method for everything else); a subclass that overrides ``send`` keeps its own."""
    from zcnet._accel import speedups

    if speedups is None:
        pytest.skip("the Python implementation is active (no compiled send path)")

    class Counting(Sender):
        calls = 0

        def send(self, buf):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().send(buf)

    client, server = tcp_pair()
    with Sender(client) as sender:
        assert isinstance(sender.send.__self__, speedups.TxCore)
    client, server2 = tcp_pair()
    with Counting(client) as sub:
        sub.send(b"x" * 100)
        assert Counting.calls == 1
    server.close()
    server2.close()
