"""Receiver errors: reset, timeout, EOF, non-TCP and unconnected sockets, closed receiver."""

from __future__ import annotations

import array
import errno
import math
import mmap
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.rx_helpers import PATTERN, send_stream, tcp_pair
from zcnet.errors import (
    ConnectionResetByPeer,
    InvalidBufferError,
    ReceiveError,
    SocketClosedError,
    TimeoutExpired,
    UnsupportedSocketError,
    ZcnetError,
)
from zcnet.receiver import Chunk, Receiver, RecvPolicy


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("mode", ["recv", "recv_into"])
def test_reset_by_peer(mode: str) -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        _reset(client)
        with pytest.raises(ConnectionResetByPeer) as info:
            if mode == "recv":
                rx.recv(65536, timeout=10)
            else:
                rx.recv_into(bytearray(65536), timeout=10)
        assert isinstance(info.value.__cause__, OSError)
        assert isinstance(info.value, ConnectionError)


def test_reset_after_data_delivers_data_first() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server, RecvPolicy(force_zerocopy=True)) as rx:
        send_stream(client, 10_000, zerocopy=False, close=False)
        got = bytearray()
        while len(got) < 10_000:
            with rx.recv(65536, timeout=10) as c:
                got += c.view
        assert PATTERN.matches(0, got)
        _reset(client)
        with pytest.raises(ConnectionResetByPeer):
            rx.recv(65536, timeout=10)


def test_timeout() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        with pytest.raises(TimeoutExpired):
            rx.recv(4096, timeout=0.05)
        with pytest.raises(TimeoutExpired):
            rx.recv_into(bytearray(10), timeout=0)
        with pytest.raises(TimeoutError):  # TimeoutExpired is a TimeoutError too
            rx.recv(4096, timeout=0)
        client.sendall(b"x" * 5)  # still usable after a timeout
        with rx.recv(4096, timeout=10) as c:
            assert c.tobytes() == b"xxxxx" and not c.mapped
    client.close()


@pytest.mark.parametrize("force", [False, True])
def test_eof(force: bool) -> None:
    client, server = tcp_pair(None, host="::1")
    with Receiver(server, RecvPolicy(force_zerocopy=force)) as rx:
        send_stream(client, 9000, zerocopy=True)  # shuts down and closes
        got = bytearray()
        while True:
            with rx.recv(8192, timeout=10) as c:
                if not c:
                    break
                got += c.view
        assert len(got) == 9000 and PATTERN.matches(0, got)
        again = rx.recv(8192, timeout=0)
        assert isinstance(again, Chunk) and len(again) == 0 and not again
        assert rx.recv_into(bytearray(10), timeout=0) == 0


def test_non_tcp_sockets_rejected() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("127.0.0.1", 9))
        with pytest.raises(UnsupportedSocketError):
            Receiver(udp)
    a, b = socket.socketpair()
    with a, b, pytest.raises(UnsupportedSocketError):
        Receiver(a)


def test_unconnected_socket_rejected() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        with pytest.raises(UnsupportedSocketError) as info:
            Receiver(s)
        assert isinstance(info.value.__cause__, OSError)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    with ls, pytest.raises(UnsupportedSocketError):
        Receiver(ls)


def test_closed_socket_and_receiver() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    server.close()
    with pytest.raises(SocketClosedError):
        Receiver(server)
    client2, server2 = tcp_pair(None, host="127.0.0.1")
    rx = Receiver(server2)
    rx.close()
    rx.close()  # idempotent
    assert rx.fileno() == -1
    with pytest.raises(SocketClosedError):
        rx.recv(10)
    with pytest.raises(SocketClosedError):
        rx.recv_into(bytearray(10))
    for s in (client, client2):
        s.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RecvPolicy(copybuf_len=4096)
    with pytest.raises(ValueError):
        RecvPolicy(window_bytes=1000)
    with pytest.raises(ValueError):
        RecvPolicy(max_windows=0)
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        with pytest.raises(ValueError):
            rx.recv(0)
        assert rx.recv_into(bytearray(0)) == 0
    client.close()


def _returns_promptly(fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` in a thread; the exception it raised, failing if it blocked."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the call waited for data instead of rejecting its argument"
    return caught[0] if caught else None


@pytest.mark.parametrize("make", [
    lambda: b"read-only bytes",
    lambda: memoryview(bytearray(64)).toreadonly(),
    lambda: memoryview(bytearray(64))[::2],  # not contiguous
    lambda: mmap.mmap(-1, 4096, access=mmap.ACCESS_READ),
    lambda: "a str",
    lambda: 1234,
    lambda: None,
], ids=["bytes", "readonly-view", "strided", "readonly-mmap", "str", "int", "none"])
def test_recv_into_rejects_unusable_buffers_at_once(make: Callable[[], Any]) -> None:
    """No data is queued and the timeout is None: a check after the wait would block forever."""
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        err = _returns_promptly(lambda: rx.recv_into(make(), timeout=None))
        assert isinstance(err, InvalidBufferError) and isinstance(err, TypeError), err
        # the socket was not touched: bytes sent afterwards all arrive, in order
        client.sendall(b"after")
        buf = bytearray(16)
        assert rx.recv_into(buf, timeout=10) == 5 and buf[:5] == b"after"
    client.close()


def test_recv_into_takes_any_writable_contiguous_buffer() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        client.sendall(bytes(range(16)))
        arr = array.array("I", [0] * 2)  # itemsize 4: filled byte by byte
        assert rx.recv_into(arr, timeout=10) == 8
        assert arr.tobytes() == bytes(range(8))
        grid = bytearray(8)
        assert rx.recv_into(memoryview(grid).cast("B", (2, 4)), timeout=10) == 8
        assert grid == bytes(range(8, 16))
    client.close()


@pytest.mark.parametrize(("kwargs", "exc", "words"), [
    ({"max_bytes": 0}, ValueError, "max_bytes must be a positive"),
    ({"max_bytes": -5}, ValueError, "got -5"),
    ({"max_bytes": 1.5}, TypeError, "max_bytes must be an int"),
    ({"max_bytes": "10"}, TypeError, "max_bytes must be an int"),
    ({"max_bytes": True}, TypeError, "max_bytes must be an int"),
    ({"max_bytes": 10, "timeout": -1}, ValueError, "timeout must be >= 0"),
    ({"max_bytes": 10, "timeout": math.nan}, ValueError, "timeout must be >= 0"),
    ({"max_bytes": 10, "timeout": "1"}, TypeError, "timeout must be a number"),
])
def test_recv_argument_checks(kwargs: dict[str, Any], exc: type[Exception], words: str) -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        err = _returns_promptly(lambda: rx.recv(**kwargs))
        assert type(err) is exc and words in str(err), err
        with pytest.raises(ValueError, match="timeout"):
            rx.recv_into(bytearray(4), timeout=-0.5)
    client.close()


def test_constructor_argument_checks() -> None:
    with pytest.raises(UnsupportedSocketError):
        Receiver(3)  # type: ignore[arg-type]
    client, server = tcp_pair(None, host="127.0.0.1")
    with pytest.raises(TypeError, match="RecvPolicy"):
        Receiver(server, {"window_bytes": 4096})  # type: ignore[arg-type]
    for bad in ({"probe_calls": 0}, {"min_mapped_fraction": 2.0}, {"map_backoff_max": 0},
                {"rcvlowat": -1}, {"min_map_bytes": -1}):
        with pytest.raises(ValueError):
            RecvPolicy(**bad)  # type: ignore[arg-type]
    for s in (client, server):
        s.close()


def test_kernel_errors_go_through_the_one_translator() -> None:
    """The message names the failed call; the OSError is kept as the cause."""
    client, server = tcp_pair(None, host="127.0.0.1")
    with Receiver(server) as rx:
        _reset(client)
        with pytest.raises(ConnectionResetByPeer) as info:
            rx.recv(65536, timeout=10)
        assert str(info.value).startswith(("recv: receive: connection lost",
                                           "TCP_ZEROCOPY_RECEIVE: receive: connection lost"))
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ECONNRESET
    assert issubclass(ReceiveError, ZcnetError)


def test_errors_share_the_base() -> None:
    assert issubclass(ConnectionResetByPeer, ZcnetError)
    assert issubclass(UnsupportedSocketError, ZcnetError)
