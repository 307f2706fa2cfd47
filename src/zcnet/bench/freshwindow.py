"""A bench-only naive zero-copy receiver that maps a fresh window for every receive.

Theory of operation: zcnet's :class:`zcnet.receiver.Receiver` keeps a few long-lived windows per
connection and reuses them (docs/ARCHITECTURE.md, 'Receive: long-lived windows'), so a receive
never changes the process's address space: since Linux 6.5 ``find_tcp_vma`` (net/ipv4/tcp.c)
finds the window under its own VMA lock (``lock_vma_under_rcu``, mm/memory.c) and takes
``mmap_lock`` for read only when that fails. This receiver is the design that does not: each
:meth:`FreshWindowReceiver.recv` maps a new window over the socket (``mmap`` takes ``mmap_lock``
for write, mm/mmap.c), runs one ``TCP_ZEROCOPY_RECEIVE`` into it and, when the chunk is released,
unmaps it (``munmap``, write lock again). ``zcnet bench rpc --mmap-churn`` compares the two
against a thread that takes the write lock in a loop. It offers no copy buffer: bytes the kernel
cannot map are read with ``recv`` (``recv_skip_hint``). Not for use outside the benchmark: a
chunk's view must be released before the chunk (the window is unmapped then; reading it after
that faults).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import select
import socket
from dataclasses import dataclass

from zcnet.errors import TimeoutExpired
from zcnet.lowlevel._libc import errno_error, libc_function
from zcnet.lowlevel.zerocopy_rx import PAGE_SIZE, ZerocopyCall

__all__ = ["FreshChunk", "FreshWindowReceiver", "FreshWindowStats"]

_mmap = libc_function(
    "mmap", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
             ctypes.c_long), ctypes.c_void_p)
_munmap = libc_function("munmap", (ctypes.c_void_p, ctypes.c_size_t), ctypes.c_int)
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass(frozen=True, slots=True)
class FreshWindowStats:
    """Counters of one :class:`FreshWindowReceiver` (the names of ``ReceiverStats``)."""

    bytes_mapped: int
    bytes_copied: int
    calls: int
    windows_mapped: int


class FreshChunk:
    """Received bytes: a fresh window's mapped pages (unmapped by :meth:`release`) or a copy."""

    __slots__ = ("_addr", "_size", "mapped", "view")

    def __init__(self, view: memoryview, mapped: bool, addr: int = 0, size: int = 0) -> None:
        self.view = view
        self.mapped = mapped
        self._addr = addr
        self._size = size

    def __len__(self) -> int:
        return len(self.view)

    def release(self) -> None:
        """Release the view, then unmap the window (idempotent)."""
        self.view.release()
        if self._size:
            size, self._size = self._size, 0
            if _munmap(self._addr, size) != 0:
                raise errno_error("munmap")

    def __enter__(self) -> FreshChunk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FreshWindowReceiver:
    """Receives from a connected TCP socket, mapping a new window for each receive.

    Same calls as the benchmark uses of :class:`zcnet.receiver.Receiver`: :meth:`recv` (with
    ``timeout=0`` only: the rpc server polls itself), :attr:`buffered` (always 0),
    :attr:`stats`, :meth:`close`. The receiver owns the socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._call: ZerocopyCall[object] = ZerocopyCall(self._fd, 0)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLRDHUP)
        self._mapped = self._copied = self._calls = self._windows = 0
        self._skip = 0

    buffered = 0

    @property
    def stats(self) -> FreshWindowStats:
        """A snapshot of the counters."""
        return FreshWindowStats(self._mapped, self._copied, self._calls, self._windows)

    def recv(self, max_bytes: int, timeout: float | None = 0) -> FreshChunk:
        """Up to ``max_bytes`` now: mapped pages, or a copy of bytes that cannot be mapped.

        Raises:
            ValueError: ``timeout`` other than 0, or ``max_bytes`` <= 0.
            TimeoutExpired: nothing to receive.
            OSError: a failed system call.
        """
        if timeout != 0:
            raise ValueError("FreshWindowReceiver receives with timeout=0 only")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._skip:
            return self._copy(min(self._skip, max_bytes))
        if not self._poll.poll(0):
            raise TimeoutExpired("nothing to receive")
        size = -(-max_bytes // PAGE_SIZE) * PAGE_SIZE
        addr = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, self._fd, 0)
        if addr is None or addr == _MAP_FAILED:
            raise errno_error("mmap of the socket")
        self._windows += 1
        try:
            zc = self._call(addr, max_bytes // PAGE_SIZE * PAGE_SIZE, copybuf=False)
        except OSError as e:
            _munmap(addr, size)
            if e.errno == errno.EIO:
                return FreshChunk(memoryview(b""), False)
            raise
        self._calls += 1
        n, self._skip = zc.length, zc.recv_skip_hint
        if zc.err:
            _munmap(addr, size)
            raise OSError(-zc.err, "TCP_ZEROCOPY_RECEIVE")
        if not n:
            _munmap(addr, size)
            return self._copy(min(self._skip, max_bytes) if self._skip else max_bytes)
        self._mapped += n
        view = memoryview((ctypes.c_char * n).from_address(addr)).cast("B").toreadonly()
        return FreshChunk(view, True, addr, size)

    def _copy(self, n: int) -> FreshChunk:
        try:
            data = self._sock.recv(n)
        except BlockingIOError:
            raise TimeoutExpired("nothing to receive") from None
        self._skip = max(0, self._skip - len(data))
        self._copied += len(data)
        return FreshChunk(memoryview(data), False)

    def close(self) -> None:
        """Close the socket (windows are unmapped by their chunks)."""
        self._sock.close()
