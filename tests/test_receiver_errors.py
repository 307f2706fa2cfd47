"""Receiver errors: reset, timeout, EOF, non-TCP and unconnected sockets, closed receiver."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.rx_helpers import PATTERN, send_stream, tcp_pair
from zcnet.errors import (
    ConnectionResetByPeer,
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


def test_errors_share_the_base() -> None:
    assert issubclass(ConnectionResetByPeer, ZcnetError)
    assert issubclass(UnsupportedSocketError, ZcnetError)
