"""Helpers for the receive tests: a MSG_ZEROCOPY pattern sender and a verifying reader.

Receive pages are mappable over loopback only while the sender uses MSG_ZEROCOPY (its orphaned
frags are re-copied into order-0 pages; see docs/ARCHITECTURE.md, 'Receive: mappable pages'). Until
zcnet.sender lands, this
small sender does it directly: SO_ZEROCOPY on, MSG_ZEROCOPY sends of immutable pattern bytes,
error queue drained as it goes (completions are only reaped, their content is TX's business).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator

from zcnet._core.pattern import StreamPattern
from zcnet.netns import Netns
from zcnet.receiver import Receiver

SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
MSG_ERRQUEUE = 0x2000

PATTERN = StreamPattern(max_block=4 * 1024 * 1024)


def drain_errqueue(sock: socket.socket) -> int:
    """Read every pending error-queue message without blocking; returns how many."""
    n = 0
    while True:
        try:
            sock.recvmsg(0, 256, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return n
        n += 1


def send_stream(sock: socket.socket, total: int, *, zerocopy: bool = True,
                block: int = 256 * 1024, start: int = 0, close: bool = True) -> None:
    """Send PATTERN bytes ``[start, start + total)``; optionally shut down and close after."""
    if zerocopy:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    flags = MSG_ZEROCOPY if zerocopy else 0
    off = start
    end = start + total
    while off < end:
        n = min(block, end - off)
        try:
            sent = sock.send(PATTERN.block(off, n), flags)
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            select.select([], [], [sock], 0.05)
            drain_errqueue(sock)
            continue
        off += sent
        if zerocopy:
            drain_errqueue(sock)
    if close:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        if zerocopy:
            drain_errqueue(sock)
        sock.close()


def tcp_pair(ns: Netns | None = None, host: str = "::1",
             listener: Callable[[], socket.socket] | None = None
             ) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) TCP pair, created inside ``ns`` when given."""
    ctx = ns.entered() if ns is not None else contextlib.nullcontext()
    with ctx:
        if listener is not None:
            ls = listener()
        else:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            ls = socket.socket(fam, socket.SOCK_STREAM)
            ls.bind((host, 0))
            ls.listen(1)
        client = socket.create_connection(ls.getsockname()[:2])
    server, _ = ls.accept()
    ls.close()
    return client, server


@contextlib.contextmanager
def sending(sock: socket.socket, total: int, tolerate_reset: bool = False,
            **kw: object) -> Iterator[threading.Thread]:
    """Run :func:`send_stream` in a thread for the ``with`` block; re-raises its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            send_stream(sock, total, **kw)  # type: ignore[arg-type]
        except BaseException as e:
            sock.close()
            if not (tolerate_reset and isinstance(e, ConnectionResetError | BrokenPipeError)):
                errors.append(e)

    t = threading.Thread(target=run, name="rx-test-sender", daemon=True)
    t.start()
    try:
        yield t
    finally:
        t.join(60)
    if errors:
        raise errors[0]


def read_verified(rx: Receiver, total: int, max_bytes: int = 2 * 1024 * 1024,
                  timeout: float = 30.0, start: int = 0) -> int:
    """Read until EOF, checking every byte against PATTERN; returns the byte count."""
    off = start
    while True:
        with rx.recv(max_bytes, timeout=timeout) as chunk:
            if not chunk:
                break
            assert len(chunk) <= max_bytes
            assert PATTERN.matches(off, chunk.view), f"corrupt bytes at stream offset {off}"
            off += len(chunk)
    assert off - start == total, f"received {off - start} bytes, expected {total}"
    return off - start


def socket_maps() -> int:
    """How many mappings of sockets this process has (lines of /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "socket:[" in line)


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


class PatternReader(threading.Thread):
    """Reads a plain socket to EOF with ``recv_into``, checking every byte against ``PATTERN``
    (the stream starts at offset 0); :meth:`finish` joins it and checks the byte count."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="pattern-reader", daemon=True)
        self.sock = sock
        self.received: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            buf = bytearray(1 << 20)
            off = 0
            with self.sock:
                while (n := self.sock.recv_into(buf)) > 0:
                    assert PATTERN.matches(off, memoryview(buf)[:n]), f"corrupt bytes at {off}"
                    off += n
            self.received = off
        except BaseException as e:  # surfaced by finish()
            self.error = e

    def finish(self, expected: int, timeout: float = 60.0) -> None:
        """Wait for EOF; assert no error and exactly ``expected`` bytes, all verified."""
        self.join(timeout)
        assert not self.is_alive(), "the reader did not reach EOF"
        assert self.error is None, self.error
        assert self.received == expected
