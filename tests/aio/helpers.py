"""Small socket helpers for the aio tests (loopback only)."""

from __future__ import annotations

import select
import socket

from zcnet._core.pattern import StreamPattern
from zcnet.aio import AioTicket, ZcStream
from zcnet.lowlevel.constants import MSG_ERRQUEUE, MSG_ZEROCOPY, SO_ZEROCOPY
from zcnet.receiver import make_mappable_listener


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


PATTERN_BLOCK = 4 * 1024 * 1024


async def stream_pair(
    *, mappable: bool = False, send_policy: object = None, recv_policy: object = None,
    sndbuf: int | None = None, rcvbuf: int | None = None,
) -> tuple[ZcStream, ZcStream]:
    """(client, server) ZcStreams over loopback; the client gets ``send_policy``."""
    if mappable:
        lsock = make_mappable_listener("127.0.0.1", 0, rcvbuf=None)
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
    with lsock:
        if rcvbuf is not None:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        c.connect(lsock.getsockname())
        s, _ = lsock.accept()
    client = ZcStream(c, send_policy=send_policy)  # type: ignore[arg-type]
    server = ZcStream(s, recv_policy=recv_policy)  # type: ignore[arg-type]
    return client, server


async def read_verified(stream: ZcStream, pattern: StreamPattern, offset: int = 0,
                        limit: int | None = None, size: int = 1 << 20) -> int:
    """Receive until EOF (or ``limit`` bytes), checking every byte; returns the bytes read."""
    got = 0
    while limit is None or got < limit:
        want = size if limit is None else min(size, limit - got)
        with await stream.recv(want) as chunk:
            if not len(chunk):
                break
            assert pattern.matches(offset + got, chunk.view), f"bad bytes at {offset + got}"
            got += len(chunk)
    return got


async def send_pattern(stream: ZcStream, pattern: StreamPattern, offset: int, nbytes: int,
                       sizes: tuple[int, ...] = (1 << 20,)) -> list[AioTicket]:
    """Send ``nbytes`` of the pattern from ``offset`` in pieces cycling through ``sizes``."""
    tickets = []
    sent, k = 0, 0
    while sent < nbytes:
        n = min(sizes[k % len(sizes)], nbytes - sent)
        tickets.append(await stream.send(pattern.block(offset + sent, n)))
        sent += n
        k += 1
    return tickets
