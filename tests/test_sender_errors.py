"""Sender errors: each typed error, raised for its real cause (fault injection only where the
kernel cannot produce it)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.conftest import requires_zerocopy
from tests.tx_helpers import ON_URING, PATTERN, msg_zerocopy_only, tcp_pair, zc_send_raw
from zcnet.errors import (
    ConnectionResetByPeer,
    InvalidBufferError,
    InvalidCompletionError,
    SendError,
    SocketClosedError,
    TimeoutExpired,
    UnsupportedSocketError,
    ZcnetError,
)
from zcnet.lowlevel.constants import SO_ZEROCOPY
from zcnet.sender import Sender, SendPolicy

FORCED = SendPolicy(force_zerocopy=True)
MiB = 1 << 20


def _released_view() -> memoryview:
    m = memoryview(b"released")
    m.release()
    return m


def test_unconnected_tcp_and_udp_are_unsupported() -> None:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock, pytest.raises(
            UnsupportedSocketError, match="not connected"
        ) as info:
            Sender(sock)
        assert isinstance(info.value.__cause__, OSError)


def test_wrong_family_or_type_is_unsupported() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(UnsupportedSocketError):
        Sender(a)
    with pytest.raises(UnsupportedSocketError):
        Sender("not a socket")  # type: ignore[arg-type]


def test_closed_socket_and_use_after_close() -> None:
    c, s = tcp_pair()
    c.close()
    with s, pytest.raises(SocketClosedError):
        Sender(c)
    c, s = tcp_pair()
    with s:
        sender = Sender(c)
        sender.close()
        sender.close()  # idempotent
        assert c.fileno() == -1 and sender.fileno() == -1
        for call in (lambda: sender.send(b"x"), sender.poll, sender.flush):
            with pytest.raises(SocketClosedError):
                call()


@pytest.mark.parametrize(
    "buf",
    [
        "text is not bytes",
        12345,
        [1, 2, 3],
        memoryview(b"abcdefgh")[::2],  # not contiguous
        _released_view(),
    ],
)
def test_invalid_buffers(buf: object) -> None:
    c, s = tcp_pair()
    with s, Sender(c) as sender, pytest.raises(InvalidBufferError):
        sender.send(buf)  # type: ignore[arg-type]
    assert isinstance(InvalidBufferError("x"), TypeError)


def test_fortran_ordered_array_is_not_c_contiguous() -> None:
    np = pytest.importorskip("numpy")
    arr = np.asfortranarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    c, s = tcp_pair()
    with s, Sender(c) as sender, pytest.raises(InvalidBufferError, match="contiguous"):
        sender.send(arr)


@requires_zerocopy
def test_peer_reset_fails_pending_tickets() -> None:
    c, s = tcp_pair()
    sender = Sender(c, FORCED)
    t1 = sender.send(PATTERN[:MiB])  # pending: over loopback done only once read
    assert not t1.done
    # the peer resets the connection (SO_LINGER 0 + close sends an RST)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    with pytest.raises(ConnectionResetByPeer) as info:
        for _ in range(100):
            sender.send(PATTERN[:200_000])
            time.sleep(0.01)
    assert isinstance(info.value.__cause__, OSError)
    assert isinstance(t1.error, ConnectionResetByPeer)
    with pytest.raises(ConnectionResetByPeer):
        t1.wait(5)  # fails at once, never pending forever
    with pytest.raises(ConnectionResetByPeer):
        sender.send(b"more")
    with pytest.raises(ConnectionResetByPeer):
        sender.flush(5)
    sender.close()  # drains what the kernel still reports, never raises
    assert t1.done or t1.error is not None


@requires_zerocopy
def test_wait_and_flush_time_out_while_receiver_does_not_read() -> None:
    c, s = tcp_pair()
    with Sender(c, FORCED) as sender:
        t = sender.send(PATTERN[:MiB])  # small sends may be copied at once into the receiver
        with pytest.raises(TimeoutExpired):
            t.wait(0.05)
        with pytest.raises(TimeoutExpired):
            sender.flush(0.05)
        assert not t.done and sender.pending == 1
        got = bytearray()
        while len(got) < MiB:
            got += s.recv(MiB)
        assert got == PATTERN[:MiB]
        t.wait(10)
        assert t.done
    s.close()


@requires_zerocopy
def test_close_gives_up_after_drain_timeout_without_releasing() -> None:
    c, s = tcp_pair()
    sender = Sender(c, SendPolicy(force_zerocopy=True, drain_timeout=0.05))
    ba = bytearray(PATTERN[:MiB])
    t = sender.send(ba)
    sender.close()  # the receiver never read: the kernel may still hold the pages
    assert not t.done and isinstance(t.error, SocketClosedError)
    with pytest.raises(BufferError):
        ba.extend(b"x")  # never handed back while the kernel might read it
    with pytest.raises(SocketClosedError):
        t.wait(0)
    s.close()


@requires_zerocopy
@msg_zerocopy_only("a MSG_ZEROCOPY send behind its back cannot reach the ring's counter")
def test_foreign_zerocopy_send_is_an_invalid_completion() -> None:
    """A MSG_ZEROCOPY send behind the Sender's back shifts the counter: refused, not released."""
    c, s = tcp_pair()
    with s, Sender(c, FORCED) as sender:
        zc_send_raw(c, PATTERN[:50_000])  # counter value 0, unknown to the Sender
        got = bytearray()
        while len(got) < 50_000:
            got += s.recv(1 << 20)
        deadline = time.monotonic() + 5
        with pytest.raises(InvalidCompletionError):
            while time.monotonic() < deadline:
                sender.poll()
                time.sleep(0.01)


def test_udp_datagram_too_large_is_a_send_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        with Sender(u) as sender:
            for size in (70_000, 5_000):  # zero-copy path and plain path
                with pytest.raises(SendError) as info:
                    sender.send(bytes(size) * (1 if size > 65_507 else 14))
                assert isinstance(info.value.__cause__, OSError)
            assert isinstance(info.value, ZcnetError)
            # on UDP one failed datagram does not end the Sender
            payload = PATTERN[:20_000]
            t = sender.send(payload)
            assert r.recv(70_000) == payload
            sender.flush(5)
            assert t.done


class _NoZerocopySocket(socket.socket):
    """Fault injection: a kernel without SO_ZEROCOPY (Linux < 4.14)."""

    def setsockopt(self, level: int, opt: int, value: object, *rest: object) -> None:  # type: ignore[override]
        if level == socket.SOL_SOCKET and opt == SO_ZEROCOPY:
            raise OSError(92, "Protocol not available")
        super().setsockopt(level, opt, value, *rest)  # type: ignore[call-overload]


@msg_zerocopy_only("SO_ZEROCOPY is its switch; io_uring's SEND_ZC does not use it")
def test_without_so_zerocopy_falls_back_with_reason() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        c = _NoZerocopySocket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(ls.getsockname())
        s, _ = ls.accept()
    with s, Sender(c) as sender:
        st = sender.stats
        assert st.mode == "copy"
        assert st.fallback_reason is not None and "SO_ZEROCOPY" in st.fallback_reason
        t = sender.send(PATTERN[:1 << 20])
        assert t.done and not t.zerocopy and t.copied is None
        got = bytearray()
        while len(got) < 1 << 20:
            got += s.recv(1 << 20)
        assert got == PATTERN[:1 << 20]
        assert sender.stats.sends_zerocopy == 0


def test_mptcp_refuses_so_zerocopy() -> None:
    """A real kernel refusal: MPTCP sockets do not support SO_ZEROCOPY (MSG_ZEROCOPY engine:
    refused when the Sender starts) nor SEND_ZC (io_uring engine: EOPNOTSUPP at the first
    zero-copy send, which goes out as a copy)."""
    try:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
    except OSError as e:
        pytest.skip(f"MPTCP unavailable: {e}")
    with socket.create_server(("127.0.0.1", 0)) as ls:
        c.connect(ls.getsockname())
        s, _ = ls.accept()
    with s, Sender(c) as sender:
        sender.send(PATTERN[:100_000])
        assert sender.stats.mode == "copy" and sender.stats.sends_zerocopy == 0
        reason = sender.stats.fallback_reason or ""
        assert ("refused a zero-copy send" if ON_URING else "SO_ZEROCOPY") in reason
        got = bytearray()
        while len(got) < 100_000:
            got += s.recv(1 << 20)
        assert got == PATTERN[:100_000]
