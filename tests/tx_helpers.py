"""Helpers for the transmit tests: loopback connections and a byte-verifying receiver thread."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from zcnet._core.txpolicy import resolve_engine
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_RCVBUFFORCE

#: The send engine these tests run the Sender on: ``$ZCNET_SEND_ENGINE`` (the default policy's),
#: else ``msg_zerocopy``; scripts/test-every-python.sh runs the Sender tests once per engine.
ENGINE = resolve_engine(None, os.environ)
ON_URING = ENGINE == "io_uring"


def msg_zerocopy_only(why: str) -> pytest.MarkDecorator:
    """Skip on the io_uring engine a test of a mechanism that only ``MSG_ZEROCOPY`` has."""
    return pytest.mark.skipif(ON_URING, reason=f"MSG_ZEROCOPY engine only: {why}")

# A random period; byte i of every test stream is PATTERN[i % PERIOD]. Doubled so that any slice
# of up to PERIOD bytes starting anywhere in the period is one contiguous slice of PATTERN2.

PERIOD = 4 * 1024 * 1024 + 13
PATTERN = os.urandom(PERIOD)
PATTERN2 = PATTERN + PATTERN


def pattern_bytes(offset: int, n: int) -> bytearray:
    """Bytes ``offset .. offset+n`` of the pattern stream (a writable copy, any length)."""
    reps = (offset % PERIOD + n) // PERIOD + 1
    start = offset % PERIOD
    return bytearray((PATTERN * reps)[start:start + n])


def tcp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server-side) TCP pair over loopback."""
    addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.create_server((addr, 0), family=family) as ls:
        c = socket.create_connection(ls.getsockname()[:2])
        s, _ = ls.accept()
    return c, s


def stalled_tcp_pair() -> tuple[socket.socket, socket.socket, int]:
    """A loopback TCP pair with 64 KiB buffers whose client has written pattern bytes until
    nothing moves (its send buffer and the peer's window are full, the peer not reading):
    (client, server-side, the bytes written). The client is left non-blocking."""
    client, server = tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.setblocking(False)
    offset = 0
    quiet = 0
    while quiet < 3:
        try:
            offset += client.send(pattern_bytes(offset, 16 * 1024))
            quiet = 0
        except BlockingIOError:
            quiet += 1
            time.sleep(0.1)
    return client, server, offset


def pattern_slices(total: int, sizes: list[int]) -> Iterator[memoryview]:
    """Read-only slices of the pattern stream, cycling through ``sizes``, adding up to ``total``."""
    view = memoryview(PATTERN2)
    pos = 0
    k = 0
    while pos < total:
        n = min(sizes[k % len(sizes)], total - pos, PERIOD)
        k += 1
        start = pos % PERIOD
        yield view[start : start + n]
        pos += n


class VerifyingReceiver(threading.Thread):
    """Reads a socket to EOF with ``recv_into`` and checks every byte against the pattern stream.

    ``delay`` sleeps that long before reading each chunk for the first ``slow_reads`` chunks (a
    slow receiver).
    """

    def __init__(self, sock: socket.socket, delay: float = 0.0, slow_reads: int = 0) -> None:
        super().__init__(name="tx-test-receiver", daemon=True)
        self.sock = sock
        self.delay = delay
        self.slow_reads = slow_reads
        self.received = 0
        self.mismatch_at: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        pat = memoryview(PATTERN2)
        reads = 0
        try:
            while True:
                if reads < self.slow_reads:
                    time.sleep(self.delay)
                n = self.sock.recv_into(buf, 65536 if reads < self.slow_reads else len(buf))
                reads += 1
                if not n:
                    break
                start = self.received % PERIOD
                if view[:n] != pat[start : start + n] and self.mismatch_at is None:
                    self.mismatch_at = self.received
                self.received += n
        except BaseException as e:  # surfaced by finish()
            self.error = e
        finally:
            self.sock.close()

    def finish(self, expected: int, timeout: float = 120.0) -> None:
        """Join and assert that exactly ``expected`` bytes arrived, all equal to the pattern."""
        self.join(timeout)
        assert not self.is_alive(), "receiver did not reach EOF"
        if self.error is not None:
            raise self.error
        assert self.mismatch_at is None, f"byte mismatch in the chunk at offset {self.mismatch_at}"
        assert self.received == expected


def zc_send_raw(sock: socket.socket, data: bytes) -> int:
    """One ``send(..., MSG_ZEROCOPY)`` behind any Sender's back (fault injection)."""
    return sock.send(data, MSG_ZEROCOPY)


def wait_pollerr(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Wait until the socket reports POLLERR (e.g. a queued completion)."""
    p = select.poll()
    p.register(sock, select.POLLERR)
    return bool(p.poll(int(timeout * 1000)))


class DatagramReceiver(threading.Thread):
    """Reads datagrams from a bound UDP socket until told to stop; :meth:`finish` compares them,
    in order, with the datagrams expected (every byte)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="tx-test-dgram-receiver", daemon=True)
        self.sock = sock
        try:  # root: beyond net.core.rmem_max, so nothing is dropped on a busy machine
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        sock.settimeout(0.05)
        self.got: list[bytes] = []
        self.expect: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.expect is None or len(self.got) < self.expect:
                try:
                    self.got.append(self.sock.recv(70_000))
                except TimeoutError:
                    continue
        except BaseException as e:  # surfaced by finish()
            self.error = e

    def finish(self, expected: list[bytes], timeout: float = 30.0) -> None:
        """Wait for ``len(expected)`` datagrams and assert they equal ``expected``, in order."""
        self.expect = len(expected)
        self.join(timeout)
        try:
            assert not self.is_alive(), f"only {len(self.got)} of {len(expected)} datagrams"
            if self.error is not None:
                raise self.error
            assert len(self.got) == len(expected)
            for k, (got, exp) in enumerate(zip(self.got, expected, strict=True)):
                assert got == exp, f"datagram {k} differs ({len(got)} vs {len(exp)} bytes)"
            self.sock.settimeout(0)
            with contextlib.suppress(BlockingIOError):
                extra = self.sock.recv(70_000)
                raise AssertionError(f"an unexpected datagram of {len(extra)} bytes")
        finally:
            self.expect = 0
            self.join(1)
            self.sock.close()


def udp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, DatagramReceiver]:
    """A UDP socket connected over loopback to a started :class:`DatagramReceiver`."""
    addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    r = socket.socket(family, socket.SOCK_DGRAM)
    r.bind((addr, 0))
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.connect(r.getsockname()[:2])
    rx = DatagramReceiver(r)
    rx.start()
    return u, rx


@contextlib.contextmanager
def sigint_after(seconds: float) -> Iterator[None]:
    """SIGINT to this process after ``seconds``, unless the block ended first."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def handed_bytes(sender: Any) -> int:
    """The bytes a ``zcnet.sender.Sender`` counts as handed to the kernel, whatever became of
    them."""
    s = sender.stats
    return s.bytes_plain + s.bytes_zerocopy + s.bytes_copied + s.bytes_pending
