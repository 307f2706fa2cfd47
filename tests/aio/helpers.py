"""Small socket helpers for the aio tests (loopback only)."""

from __future__ import annotations

import select
import socket

from zcnet.lowlevel.constants import MSG_ERRQUEUE, MSG_ZEROCOPY, SO_ZEROCOPY


def tcp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    """A connected, non-blocking TCP pair over loopback."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as lsock:
        lsock.bind((host, 0))
        lsock.listen(1)
        a = socket.create_connection(lsock.getsockname()[:2])
        b, _ = lsock.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def raw_zerocopy_send(sock: socket.socket, data: bytes) -> None:
    """One raw MSG_ZEROCOPY send (SO_ZEROCOPY enabled on the way); completions are not read."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    sent = sock.send(data, MSG_ZEROCOPY)
    assert sent == len(data)


def wait_pollerr(sock: socket.socket, timeout_ms: int = 5000) -> bool:
    """Whether the socket reports POLLERR (e.g. completions queued) within the timeout."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLERR)
    return any(ev & select.POLLERR for _, ev in p.poll(timeout_ms))


def drain_errqueue(sock: socket.socket) -> int:
    """Read and discard every error-queue message; returns how many there were."""
    n = 0
    while True:
        try:
            sock.recvmsg(0, 1024, MSG_ERRQUEUE)
        except BlockingIOError:
            return n
        n += 1
