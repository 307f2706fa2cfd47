"""Sender over real loopback sockets: every byte verified, every ticket completed."""

from __future__ import annotations

import array
import socket
import struct

import pytest

from tests.conftest import requires_zerocopy
from tests.tx_helpers import ON_URING, PATTERN, VerifyingReceiver, pattern_slices, tcp_pair
from zcnet.lowlevel.constants import IP_RECVERR, IPV6_RECVERR, SOL_IP, SOL_IPV6
from zcnet.sender import ZC_CHUNK, Sender, SendPolicy, Ticket

GiB = 1 << 30
MiB = 1 << 20
# sizes below and above the threshold, one above ZC_CHUNK (several calls per ticket)
SIZES = [MiB, 3 * MiB + 5, 65536, 1000, 300_000, 10 * 1024, 10 * 1024 - 1]
assert max(SIZES) > ZC_CHUNK


def _stream(sender: Sender, total: int, sizes: list[int]) -> list[Ticket]:
    tickets = [sender.send(v) for v in pattern_slices(total, sizes)]
    sender.flush(60)
    return tickets


def _check_accounting(sender: Sender, tickets: list[Ticket], total: int) -> None:
    st = sender.stats
    assert all(t.done and t.error is None for t in tickets)
    assert sum(t.nbytes for t in tickets) == total
    assert st.bytes_pending == 0
    assert st.bytes_zerocopy + st.bytes_copied + st.bytes_plain == total
    assert st.completions == st.sends_zerocopy
    assert sender.pending == 0


@requires_zerocopy
def test_tcp_1gib_default_policy_falls_back_to_copy() -> None:
    """Over loopback the kernel reports copies: the Sender switches itself to plain sends."""
    c, s = tcp_pair()
    rx = VerifyingReceiver(s)
    rx.start()
    with Sender(c) as sender:
        tickets = _stream(sender, GiB, SIZES)
        st = sender.stats
        _check_accounting(sender, tickets, GiB)
        assert st.mode == "copy"
        assert st.fallback_reason is not None and "copied" in st.fallback_reason
        assert st.sends_zerocopy > 0 and st.bytes_copied > 0 and st.bytes_zerocopy == 0
        assert st.bytes_plain > GiB // 2  # the bulk went out as plain sends after the switch
        zc_tickets = [t for t in tickets if t.zerocopy]
        assert zc_tickets and all(t.copied is True for t in zc_tickets)
        assert all(t.copied is None for t in tickets if not t.zerocopy)
        c.shutdown(socket.SHUT_WR)
    rx.finish(GiB)


@requires_zerocopy
@pytest.mark.parametrize(
    ("family", "total"),
    [(socket.AF_INET, 256 * MiB), (socket.AF_INET6, 64 * MiB)],
    ids=["ipv4", "ipv6"],
)
def test_tcp_forced_zerocopy_keeps_msg_zerocopy(family: int, total: int) -> None:
    c, s = tcp_pair(family)
    rx = VerifyingReceiver(s)
    rx.start()
    with Sender(c, SendPolicy(force_zerocopy=True)) as sender:
        tickets = _stream(sender, total, SIZES)
        st = sender.stats
        _check_accounting(sender, tickets, total)
        assert st.mode == "zerocopy" and st.fallback_reason is None
        small = sum(t.nbytes for t in tickets if t.nbytes < 10 * 1024)
        assert st.bytes_plain == small  # only sends under the threshold were copies
        assert st.bytes_copied == total - small  # loopback: the kernel copied every zc call
        assert all(t.zerocopy and t.copied for t in tickets if t.nbytes >= 10 * 1024)
        big = [t for t in tickets if t.nbytes > ZC_CHUNK]
        assert big and st.sends_zerocopy > len([t for t in tickets if t.zerocopy])
        c.shutdown(socket.SHUT_WR)
    rx.finish(total)


@requires_zerocopy
def test_udp_loopback_datagrams_verified() -> None:
    """UDP: one datagram per send, zero-copy first, copy after the kernel reports copies."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * MiB)
        r.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        sizes = [30_000, 12_000, 500, 65_000]
        count = 120
        sent: list[bytes] = []
        with Sender(u) as sender:
            for i in range(count):
                n = sizes[i % len(sizes)]
                payload = PATTERN[i * 7 : i * 7 + n]
                sent.append(payload)
                t = sender.send(payload)
                assert t.nbytes == n
                got = r.recv(70_000)  # read as we go so the socket buffer never overflows
                assert got == payload
            sender.flush(10)
            st = sender.stats
            assert st.sends_zerocopy >= 1 and st.mode == "copy"
            assert st.sends_zerocopy + st.sends_plain == count
            assert st.bytes_copied + st.bytes_plain == sum(map(len, sent))


@requires_zerocopy
def test_buffer_export_held_until_done_and_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    c, s = tcp_pair()
    with s, Sender(c, SendPolicy(force_zerocopy=True)) as sender:
        ba = bytearray(PATTERN[:MiB])  # large: small sends may be copied into the receiver
        t = sender.send(ba)
        assert t.zerocopy and not t.done  # loopback: done only once the receiver read it
        with pytest.raises(BufferError):
            ba.extend(b"x")  # the Sender holds a memoryview export until done
        calls: list[Ticket] = []
        t.add_done_callback(calls.append)
        t.add_done_callback(lambda _t: 1 / 0)  # logged, not raised
        after: list[Ticket] = []
        t.add_done_callback(after.append)  # runs although the one before raised
        got = bytearray()
        while len(got) < len(ba):
            got += s.recv(MiB)
        assert got == PATTERN[: len(ba)]
        t.wait(10)
        assert t.done and t.copied is True and calls == [t] and after == [t]
        assert "Ticket done callback" in caplog.text and "ZeroDivisionError" in caplog.text
        ba.extend(b"x")  # released
        later: list[Ticket] = []
        t.add_done_callback(later.append)  # already done: runs at once
        assert later == [t]
        assert sender.poll() == 0


@requires_zerocopy
def test_typed_and_multidim_buffers_are_sent_as_raw_bytes() -> None:
    c, s = tcp_pair()
    with s, Sender(c, SendPolicy(zerocopy_threshold=0, force_zerocopy=True)) as sender:
        ints = array.array("i", range(8192))
        grid = memoryview(bytearray(PATTERN[:40_000])).cast("B", (200, 200))
        expected = ints.tobytes() + grid.tobytes()
        t1 = sender.send(ints)
        t2 = sender.send(grid)
        assert (t1.nbytes, t2.nbytes) == (len(ints) * ints.itemsize, 40_000)
        got = bytearray()
        while len(got) < len(expected):
            got += s.recv(MiB)
        assert got == expected
        sender.flush(10)
        assert t1.done and t2.done
        assert sender.send(b"").nbytes == 0  # empty: a plain no-op, never a zero-copy call
        assert sender.stats.sends_zerocopy == 2


@requires_zerocopy
def test_partial_sends_and_eagain_keep_the_counter_in_step() -> None:
    """With SO_SNDTIMEO a blocking send returns early (partial) or fails with EAGAIN; each
    partial call takes one counter value, a failed one none. A miscount would show up as an
    InvalidCompletionError or a ticket that never completes."""
    c, s = tcp_pair()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 2000))  # 2 ms
    rx = VerifyingReceiver(s, delay=0.003, slow_reads=150)
    rx.start()
    total = 48 * MiB
    sizes = [3 * MiB + 5, 700_000, 2 * MiB]
    with Sender(c, SendPolicy(force_zerocopy=True)) as sender:
        tickets = _stream(sender, total, sizes)
        _check_accounting(sender, tickets, total)
        pieces = sum(-(-t.nbytes // ZC_CHUNK) for t in tickets)
        if ON_URING:  # SEND_ZC with MSG_WAITALL: the kernel finishes each piece itself
            assert sender.stats.sends_zerocopy == pieces
        else:
            assert sender.stats.sends_zerocopy > pieces, "expected partial sends"
        c.shutdown(socket.SHUT_WR)
    rx.finish(total)


@pytest.mark.parametrize(
    ("family", "host", "level", "name"),
    [(socket.AF_INET, "127.0.0.1", SOL_IP, IP_RECVERR),
     (socket.AF_INET6, "::1", SOL_IPV6, IPV6_RECVERR)],
    ids=["ipv4", "ipv6"],
)
def test_udp_with_recverr_copies_and_says_why(family: int, host: str, level: int,
                                              name: int) -> None:
    """With IP_RECVERR a dropped datagram's ENOBUFS would be ambiguous for the counter (on
    io_uring it is not: a failed SEND_ZC takes no counter value, so zero-copy stays on)."""
    with socket.socket(family, socket.SOCK_DGRAM) as r:
        r.bind((host, 0))
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.setsockopt(level, name, 1)
        u.connect(r.getsockname()[:2])
        with Sender(u) as sender:
            payloads = [PATTERN[i : i + 20_000] for i in range(0, 200_000, 20_000)]
            for p in payloads:
                sender.send(p)
                assert r.recv(70_000) == p
            st = sender.stats
    if ON_URING:
        assert "IP_RECVERR" not in (st.fallback_reason or "") and st.sends_zerocopy > 0
        handed = st.bytes_plain + st.bytes_zerocopy + st.bytes_copied + st.bytes_pending
        assert handed == sum(map(len, payloads))
        return
    assert st.mode == "copy" and st.sends_zerocopy == 0
    assert st.fallback_reason is not None and "IP_RECVERR" in st.fallback_reason
    assert st.bytes_plain == sum(map(len, payloads))


def test_compiled_reap_cadence_matches_the_policy() -> None:
    """txfast.c repeats REAP_EVERY/REAP_SHIFT of zcnet._core.txpolicy (one number, two copies)."""
    from zcnet._accel import speedups
    from zcnet._core.txpolicy import REAP_EVERY, REAP_SHIFT

    if speedups is None:
        pytest.skip("the Python implementation is active (no compiled send path)")
    assert (speedups.REAP_EVERY, speedups.REAP_SHIFT) == (REAP_EVERY, REAP_SHIFT)
