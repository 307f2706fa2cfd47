"""Sender.send_batch (sendmmsg) on real sockets: every datagram verified, the counter in step."""

from __future__ import annotations

import array
import socket

import pytest

from tests.conftest import requires_zerocopy
from tests.tx_helpers import PATTERN, VerifyingReceiver, pattern_slices, tcp_pair, udp_pair
from zcnet.errors import InvalidBufferError, SendError, SocketClosedError
from zcnet.sender import BATCH_MAX, Sender, SendPolicy, Ticket

MiB = 1 << 20
FORCED = SendPolicy(force_zerocopy=True)


def _payloads(count: int, sizes: list[int]) -> list[bytes]:
    """Distinct datagrams: slices of the random pattern at varying offsets."""
    return [PATTERN[i * 997 : i * 997 + sizes[i % len(sizes)]] for i in range(count)]


def _check(sender: Sender, tickets: list[Ticket], payloads: list[bytes]) -> None:
    st = sender.stats
    assert len(tickets) == len(payloads)
    assert [t.nbytes for t in tickets] == [len(p) for p in payloads]
    assert all(t.done and t.error is None for t in tickets)
    assert st.bytes_pending == 0 and sender.pending == 0
    assert st.bytes_zerocopy + st.bytes_copied + st.bytes_plain == sum(map(len, payloads))
    assert st.completions == st.sends_zerocopy  # one counter value per zero-copy datagram
    assert st.sends_zerocopy + st.sends_plain == len(payloads)


@requires_zerocopy
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_udp_loopback_batches_forced_zerocopy(family: int) -> None:
    """Batches larger and smaller than BATCH_MAX, sizes on both sides of the threshold (so each
    batch mixes zero-copy and copying sendmmsg runs), an empty datagram: all arrive in order."""
    u, rx = udp_pair(family)
    sizes = [30_000, 65_000, 12_000, 500, 0, 10 * 1024, 10 * 1024 - 1, 65_507, 40_000]
    payloads = _payloads(600, sizes)
    tickets: list[Ticket] = []
    with Sender(u, FORCED) as sender:
        pos = 0
        for n in (1, 7, BATCH_MAX, BATCH_MAX + 1, 3 * BATCH_MAX + 5, 2, 150):
            chunk = payloads[pos : pos + n]
            pos += n
            tickets += sender.send_batch(chunk)
        tickets += sender.send_batch(payloads[pos:])
        sender.flush(30)
        _check(sender, tickets, payloads)
        st = sender.stats
        zc = [t for t, p in zip(tickets, payloads, strict=True) if len(p) >= 10 * 1024]
        assert st.sends_zerocopy == len(zc) and st.mode == "zerocopy"
        assert all(t.zerocopy and t.copied is True for t in zc)  # loopback: the kernel copies
        assert all(not t.zerocopy and t.copied is None for t in tickets if t not in zc)
        assert st.bytes_copied == sum(t.nbytes for t in zc)
    rx.finish(payloads)


@requires_zerocopy
def test_udp_loopback_default_policy_switches_to_copy_midway() -> None:
    """The first reap sees copied completions: the rest of the batch goes out in copying calls."""
    u, rx = udp_pair()
    payloads = _payloads(500, [20_000, 64_000, 33_333])
    with Sender(u) as sender:
        tickets = sender.send_batch(payloads)
        sender.flush(30)
        _check(sender, tickets, payloads)
        st = sender.stats
        assert st.mode == "copy" and st.fallback_reason is not None
        assert 0 < st.sends_zerocopy < len(payloads) and st.sends_plain > 0
        assert st.bytes_zerocopy == 0
        # the tickets of datagrams sent after the switch say so
        assert sum(t.zerocopy for t in tickets) == st.sends_zerocopy
        assert all(t.copied is True for t in tickets if t.zerocopy)
        assert all(t.copied is None for t in tickets if not t.zerocopy)
    rx.finish(payloads)


@requires_zerocopy
def test_refused_datagram_fails_its_ticket_only() -> None:
    """A datagram the kernel refuses (EMSGSIZE) mid-batch: sendmmsg stops there, the batch
    goes on after it, the counter stays in step (no InvalidCompletionError, all complete)."""
    u, rx = udp_pair()
    good = _payloads(40, [20_000, 50_000, 3_000])
    batch: list[bytes] = [*good[:10], bytes(70_000), *good[10:30], bytes(66_000), *good[30:]]
    with Sender(u, FORCED) as sender:
        tickets = sender.send_batch(batch)
        sender.flush(30)
        bad = [tickets[10], tickets[31]]
        for t in bad:
            assert t.done and isinstance(t.error, SendError) and not t.zerocopy
            assert isinstance(t.error.__cause__, OSError)
            with pytest.raises(SendError):
                t.wait(1)
        ok = [t for t in tickets if t not in bad]
        _check(sender, ok, good)
        assert sender.stats.sends_zerocopy == sum(1 for p in good if len(p) >= 10 * 1024)
        more = sender.send_batch(good[:5])  # the Sender goes on
        sender.flush(10)
        assert all(t.done and t.error is None for t in more)
    rx.finish(good + good[:5])


def test_bad_input_sends_nothing() -> None:
    u, rx = udp_pair()
    ba = bytearray(PATTERN[:30_000])
    fortran: list[object] = []
    try:
        import numpy as np

        fortran.append(np.asfortranarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
    except ImportError:  # pragma: no cover
        pass
    with Sender(u, FORCED) as sender:
        for bad in ("text", 12345, None, memoryview(ba)[::2], *fortran):
            with pytest.raises(InvalidBufferError):
                sender.send_batch([ba, bad, PATTERN[:20_000]])  # type: ignore[list-item]
        ba.extend(b"x")  # the views taken before the bad element were released
        assert sender.stats.sends_zerocopy == sender.stats.sends_plain == 0
        assert sender.send_batch([]) == []
        # 2-D and typed C-contiguous buffers are sent as their raw bytes, as send() does
        grid = memoryview(bytearray(PATTERN[:40_000])).cast("B", (200, 200))
        ints = array.array("i", range(5000))
        tickets = sender.send_batch([grid, ints])
        assert [t.nbytes for t in tickets] == [40_000, 20_000]
        sender.flush(10)
    rx.finish([PATTERN[:40_000], ints.tobytes()])
    u2, rx2 = udp_pair()
    sender2 = Sender(u2)
    sender2.close()
    with pytest.raises(SocketClosedError):
        sender2.send_batch([b"x"])
    rx2.finish([])


@requires_zerocopy
def test_tcp_send_batch_loops_over_send() -> None:
    c, s = tcp_pair()
    rx = VerifyingReceiver(s)
    rx.start()
    total = 64 * MiB
    views = list(pattern_slices(total, [MiB, 3 * MiB + 5, 70_000, 1000]))
    with Sender(c, FORCED) as sender:
        tickets = []
        for k in range(0, len(views), 16):
            tickets += sender.send_batch(views[k : k + 16])
        sender.flush(60)
        assert [t.nbytes for t in tickets] == [v.nbytes for v in views]
        assert all(t.done and t.error is None for t in tickets)
        st = sender.stats
        assert st.bytes_copied + st.bytes_plain == total and st.completions == st.sends_zerocopy
        c.shutdown(socket.SHUT_WR)
    rx.finish(total)


@requires_zerocopy
def test_all_zerocopy_batch_of_mixed_buffer_types_with_refused_datagrams() -> None:
    """A batch whose datagrams are all at or above the threshold (the compiled path's case when
    the extension is active): bytes, bytearray and memoryview elements, a tuple, refused
    datagrams at the start, middle and end, more than BATCH_MAX datagrams; every byte verified,
    the counter in step, the caller's memoryviews still their own."""
    u, rx = udp_pair()
    good = _payloads(150, [20_000, 50_000, 11_000])
    views = [memoryview(bytearray(p)) for p in good[100:]]
    elements: list[object] = [bytes(70_000), *good[:50], *map(bytearray, good[50:100]),
                              bytes(66_000), *views, bytes(65_600)]
    with Sender(u, FORCED) as sender:
        tickets = sender.send_batch(tuple(elements))  # type: ignore[arg-type]
        for v in views:
            v.release()  # the Sender holds views of its own
        sender.flush(30)
        bad = [tickets[0], tickets[101], tickets[-1]]
        for t in bad:
            assert t.done and isinstance(t.error, SendError) and not t.zerocopy
        ok = [t for t in tickets if t not in bad]
        _check(sender, ok, good)
        assert sender.stats.sends_zerocopy == len(good)
    rx.finish(good)


@requires_zerocopy
def test_a_batch_of_leases_flies_and_lands_in_the_compiled_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the extension, leases of a pool without an account go in flight and come back with
    no Python pool method (BufferPool._begin_flights, _end_flight, _return) on the way; every
    datagram arrives in order and every lease is back."""
    from zcnet._accel import speedups
    from zcnet.pool import BufferPool

    if speedups is None:
        pytest.skip("the pure-Python implementation hands leases over in BufferPool's methods")

    def refuse(*args: object) -> None:
        raise AssertionError("a Python pool method ran")

    u, rx = udp_pair()
    payloads = _payloads(3 * BATCH_MAX + 7, [20_000, 65_000, 33_333])
    with BufferPool() as pool, Sender(u, FORCED) as sender:
        for name in ("_begin_flights", "_end_flight", "_return"):
            monkeypatch.setattr(BufferPool, name, refuse)
        tickets: list[Ticket] = []
        for start in range(0, len(payloads), BATCH_MAX):
            leases = []
            for p in payloads[start : start + BATCH_MAX]:
                lease = pool.acquire(len(p))
                lease.view[:] = p
                leases.append(lease)
            tickets += sender.send_batch(leases)
        sender.flush(30)
        _check(sender, tickets, payloads)
        st = pool.stats()
        assert st.in_flight == 0 and st.outstanding == 0
        monkeypatch.undo()
    rx.finish(payloads)
