"""Zero-copy TCP receive: :class:`Receiver` hands out received pages as read-only chunks.

Theory of operation (net/ipv4/tcp.c ``tcp_zerocopy_receive``; tools/testing/selftests/net/
tcp_mmap.c; docs/ARCHITECTURE.md, 'Receive'): each connection owns a small ring of long-lived
windows, read-only shared mappings of the socket (see :mod:`zcnet.lowlevel.zerocopy_rx`). A receive
waits for readability with ``poll`` (the zero-copy call never blocks), picks a window that no live
chunk or user view refers to, and asks the kernel to map up to ``max_bytes`` of whole pages there:
those pages are the chunk, a memoryview slice of the window. Bytes the kernel could not
map come back in the copy buffer or as a ``recv_skip_hint`` (read with ``recv``); they are
delivered as separate, copied chunks, in stream order.

Safety: a later zero-copy call on a window unmaps what it held, and reading an unmapped window
page raises SIGBUS. So a window is reused only when no chunk of it and no export derived from one
is alive (the chunk's view, every slice of it, ``memoryview(chunk)``, a numpy array over it):
with the compiled extension each window's ``PinGroup`` counts them exactly, in the pure-Python
implementation CPython's export count of the window's mmap says it. If all windows are busy and
the ring is full, that receive copies instead. Windows are created on demand
(``stats.windows_mapped`` counts ``mmap`` calls) and kept until :meth:`Receiver.close`; a window
whose chunks or views are still alive at close is unmapped by the GC after the last one dies,
never under it.

Copies (copy mode, unmappable bytes, a busy ring) are received into a few reusable copy buffers
(:class:`zcnet.lowlevel.zerocopy_rx.CopyBuffers`), not a fresh ``bytes`` per call; a copy
buffer is reused under the same rule as a window, so a held copied chunk keeps its bytes.

Fallback: when a run of ``probe_calls`` zero-copy calls maps (almost) nothing (a copying sender,
an MSS that is not a page multiple), or maps only short runs cut by unmappable tails (the default
loopback MTU), the connection switches to plain ``recv`` for good and says why in
``stats.fallback_reason``, unless ``RecvPolicy.force_zerocopy``. So does a kernel that refuses the
socket ``mmap`` or the zero-copy call. A *transient* failure to map (``ENOMEM``, ``EAGAIN``,
``EMFILE``, ``ENFILE``) copies that one receive and retries after a bounded backoff
(:meth:`zcnet._core.rxpolicy.RxDecider.map_failed`), counted in ``stats.transient_map_errors``.

File descriptors: a Receiver holds none besides the socket it owns. Windows hold no fd (see
:mod:`zcnet.lowlevel.zerocopy_rx`); the instant readiness check is a ``select.poll`` object (no fd).
An ``epoll`` fd is created only if the receiver must sleep while the socket reports ``POLLERR``
with nothing to read: zero-copy completions of a ``MSG_ZEROCOPY`` sender on the same socket,
which would make a level-triggered ``poll`` return at once, again and again (see :meth:`_wait`).
Such a bidirectional receiver holds 1 extra fd from then on, until :meth:`Receiver.close`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import operator
import os
import select
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NoReturn

from zcnet._accel import speedups
from zcnet._core.buffers import byte_view
from zcnet._core.rxpolicy import COPY_REASONS, RxDecider, RxLedger, RxMode, map_error_kind
from zcnet.errors import (
    BufferLifetimeError,
    SocketClosedError,
    TimeoutExpired,
    UnsupportedSocketError,
    ZcnetError,
    ZerocopyUnavailable,
    translate_os_error,
)
from zcnet.lowlevel.constants import SO_RCVBUFFORCE, SO_RCVLOWAT, TCP_MAXSEG
from zcnet.lowlevel.probes import raw_or_packet_refusal
from zcnet.lowlevel.zerocopy_rx import PAGE_SIZE, CopyBuffers, Window, ZerocopyCall, zerocopy_call

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12
else:
    Buffer = Any

__all__ = [
    "COPY_REASONS",
    "Chunk",
    "MAPPABLE_MAXSEG",
    "ReceiverStats",
    "Receiver",
    "RecvPolicy",
    "make_mappable_listener",
]

#: TCP_MAXSEG for a listener whose connections carry one page per segment: 4096 bytes of payload
#: plus the 12-byte timestamp option (docs/ARCHITECTURE.md, 'Receive: loopback').
MAPPABLE_MAXSEG: Final = PAGE_SIZE + 12

_PEEK_FLAGS: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT


@dataclass(frozen=True, slots=True)
class RecvPolicy:
    """How a :class:`Receiver` receives.

    Attributes:
        window_bytes: size of each mapped window (a page multiple); caps one zero-copy chunk.
        max_windows: windows per connection; with all busy, receives copy.
        copybuf_len: copy buffer for unmappable tails; must stay below one page.
        force_zerocopy: never switch to copy mode.
        probe_calls: zero-copy calls per judgement of whether mapping pays (every such run of
            calls is judged, for the connection's whole life).
        rcvlowat: if > 0, wait until ``min(rcvlowat, max_bytes)`` bytes are queued (or EOF)
            before receiving (``SO_RCVLOWAT``), so one call maps many pages. Only for streams
            where the peer keeps sending: a peer that sends less and waits for an answer stalls.
        min_mapped_fraction: fraction of bytes mapped in a run of calls below which to switch.
        min_map_bytes: receives asking for less than this are copies (``small_request``): a
            zero-copy call has a fixed cost (system call, page tables, TLB flush) that a copy of
            a few pages does not (4 KB requests mapped cost 1.5x the CPU of copies here).
        min_cut_run: when at least half the calls of a run had their mapping cut short by
            unmappable bytes (an MSS that is not a page multiple), switch unless they mapped at
            least this many bytes per call (mapping short runs costs more than copying).
        map_backoff_max: after a transient failure to map (``ENOMEM``, ``EAGAIN``, ``EMFILE``,
            ``ENFILE``) the receiver copies that receive and the next 1, 2, 4, ... receives,
            doubling per failure in a row up to this many, then tries mapping again.
        copy_buffers: reusable buffers that copies are received into (each made on demand, at
            most ``window_bytes``, which also caps one copied chunk); with all of them held by
            live chunks, a receive copies into a fresh ``bytes``.
    """

    window_bytes: int = 2 * 1024 * 1024
    max_windows: int = 8
    copybuf_len: int = PAGE_SIZE - 1
    force_zerocopy: bool = False
    probe_calls: int = 8
    rcvlowat: int = 0
    min_mapped_fraction: float = 0.1
    min_cut_run: int = 256 * 1024
    min_map_bytes: int = 16 * 1024
    map_backoff_max: int = 64
    copy_buffers: int = 2

    def __post_init__(self) -> None:
        if self.window_bytes <= 0 or self.window_bytes % PAGE_SIZE:
            raise ValueError(f"window_bytes must be a positive multiple of {PAGE_SIZE}")
        if self.max_windows < 1:
            raise ValueError("max_windows must be >= 1")
        if not 0 <= self.copybuf_len < PAGE_SIZE:
            raise ValueError(f"copybuf_len must be in [0, {PAGE_SIZE}) "
                             "(see docs/ARCHITECTURE.md, 'Receive: copybuf')")
        if self.rcvlowat < 0:
            raise ValueError("rcvlowat must be >= 0")
        if self.min_map_bytes < 0 or self.min_cut_run < 0:
            raise ValueError("min_map_bytes and min_cut_run must be >= 0")
        if not 0.0 <= self.min_mapped_fraction <= 1.0:
            raise ValueError("min_mapped_fraction must be in [0, 1]")
        if self.probe_calls < 1:
            raise ValueError("probe_calls must be >= 1")
        if self.map_backoff_max < 1:
            raise ValueError("map_backoff_max must be >= 1")
        if self.copy_buffers < 0:
            raise ValueError("copy_buffers must be >= 0")


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    """A snapshot of one connection's receive counters.

    ``calls`` counts ``TCP_ZEROCOPY_RECEIVE`` calls; ``copy_reasons`` maps each reason in
    :data:`COPY_REASONS` to the bytes copied for it. ``transient_map_errors`` counts failures to
    map for want of a resource (``ENOMEM``, ``EAGAIN``, ``EMFILE``, ``ENFILE``), each of which
    copied one receive and started a backoff (``copy_reasons["map_backoff"]``);
    ``map_retries`` counts the mapping attempts made after such a backoff.
    """

    bytes_mapped: int
    bytes_copied: int
    copy_reasons: Mapping[str, int]
    calls: int
    windows_in_use: int
    windows_mapped: int
    mode: RxMode
    fallback_reason: str | None
    transient_map_errors: int = 0
    map_retries: int = 0

    @property
    def mapped_fraction(self) -> float:
        """Mapped bytes over all bytes received (0.0 before any byte)."""
        total = self.bytes_mapped + self.bytes_copied
        return self.bytes_mapped / total if total else 0.0


_CHUNK_DOC: Final = """Received bytes: pages mapped into a window (``mapped``) or a copy; read-only.

    The view is valid until :meth:`release` (or the end of a ``with`` block). A window (or copy
    buffer) is not reused while this chunk, its view or any slice or export of it is alive, so
    hold chunks only as long as needed: a receiver whose windows are all held falls back to
    copying.

    With the compiled extension the chunk is a buffer itself on every Python version
    (``bytes(chunk)``, ``memoryview(chunk)``, ``hashlib``, ``numpy.frombuffer``,
    ``sock.sendall(chunk)``) whose exports are counted exactly; ``view`` is a new export each
    time. In the pure-Python implementation it is a buffer from Python 3.12 (PEP 688), and
    ``view`` is the chunk's one view, released by :meth:`release`.
    """


class Chunk:
    __doc__ = _CHUNK_DOC

    __slots__ = ("_len", "_view", "mapped")

    def __init__(self, view: memoryview, mapped: bool) -> None:
        self._view: memoryview | None = view
        self._len = len(view)
        self.mapped = mapped

    @property
    def view(self) -> memoryview:
        """The bytes, read-only; raises :class:`BufferLifetimeError` after :meth:`release`."""
        view = self._view
        if view is None:
            raise BufferLifetimeError("chunk used after release()")
        return view

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def tobytes(self) -> bytes:
        """A copy of the bytes."""
        return self.view.tobytes()

    if sys.version_info >= (3, 12):
        # PEP 688 (Python 3.12+): a Python class can export a buffer, so bytes(chunk),
        # memoryview(chunk), hashlib, numpy and sock.sendall take the chunk itself (on 3.11 use
        # chunk.view). The export is taken from the chunk's own view, so its window counts as
        # busy (never reused) until the consumer releases it, even past release().
        def __buffer__(self, flags: int, /) -> memoryview:
            """The chunk's read-only view (PEP 688); :class:`BufferLifetimeError` after release."""
            return self.view

        # Defined so that the type has a bf_releasebuffer slot: a consumer may hold a reference
        # to the exporter instead of the export when there is none (numpy.frombuffer does,
        # numpy/_core/src/multiarray/ctors.c PyArray_FromBuffer), which would not pin the window.
        # CPython releases the export of our view itself after this call.
        def __release_buffer__(self, view: memoryview, /) -> None:
            """PEP 688: a consumer is done with an export (nothing to do here)."""

    def release(self) -> None:
        """Drop this chunk's view (idempotent); slices the caller made stay valid."""
        view, self._view = self._view, None
        if view is not None:
            # BufferError: something (e.g. numpy) holds the view itself; the GC frees it later.
            with contextlib.suppress(BufferError):
                view.release()

    def __enter__(self) -> Chunk:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._view is None else "live"
        return f"<Chunk {self._len} bytes {'mapped' if self.mapped else 'copied'} {state}>"


if speedups is not None and not TYPE_CHECKING:
    # The compiled implementation (src/zcnet/_ext/rx.c) replaces the class above, which stays
    # the reference (and the type the checker sees): same attributes and methods.
    class Chunk(speedups.ChunkBase):
        __doc__ = _CHUNK_DOC
        __slots__ = ()


def make_mappable_listener(
    host: str = "::1",
    port: int = 0,
    *,
    family: socket.AddressFamily | None = None,
    backlog: int = 128,
    rcvbuf: int | None = 8 * 1024 * 1024,
) -> socket.socket:
    """A listening TCP socket whose connections carry one page of payload per segment.

    ``TCP_MAXSEG`` = :data:`MAPPABLE_MAXSEG` set before ``listen()`` makes the MSS 4096 bytes, so
    received pages are mappable over loopback at the default MTU (with a ``MSG_ZEROCOPY``
    sender), without a namespace or root. ``rcvbuf`` (if not ``None``) is forced with
    ``SO_RCVBUFFORCE`` when allowed (root/CAP_NET_ADMIN), else the kernel's autotuning is kept.
    """
    if family is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_MAXSEG, MAPPABLE_MAXSEG)
        if rcvbuf is not None:
            with contextlib.suppress(PermissionError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _translate(e: OSError, what: str) -> ZcnetError:
    """``e`` through zcnet's one translator, the failed call named in front of the message."""
    err = translate_os_error(e, "receive", stream=True)
    err.args = (f"{what}: {err}",)
    return err


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got "
                        f"{type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    return timeout


def _check_max_bytes(max_bytes: int) -> int:
    if isinstance(max_bytes, bool):
        raise TypeError("max_bytes must be an int, got bool")
    try:
        n = operator.index(max_bytes)
    except TypeError:
        raise TypeError(f"max_bytes must be an int, got {type(max_bytes).__name__}") from None
    if n <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes, got {n}")
    return n


def _check_socket(sock: socket.socket) -> None:
    if not isinstance(sock, socket.socket):
        raise UnsupportedSocketError(f"Receiver needs a socket.socket, got {type(sock).__name__}")
    if sock.fileno() < 0:
        raise SocketClosedError("the socket is closed")
    refusal = raw_or_packet_refusal(sock.family, sock.type)  # zcnet doctor's rule too
    if refusal is not None:
        raise UnsupportedSocketError(f"Receiver needs a TCP socket: {refusal}")
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        raise UnsupportedSocketError(
            f"Receiver needs a TCP socket, got family={sock.family!r} type={sock.type!r}")
    if sock.proto not in (0, socket.IPPROTO_TCP):
        raise UnsupportedSocketError(f"Receiver needs a TCP socket, got proto={sock.proto}")
    try:
        sock.getpeername()
    except OSError as e:
        raise UnsupportedSocketError("Receiver needs a connected socket") from e


class Receiver:
    """Receives from a connected TCP socket, mapping pages instead of copying when it can.

    The receiver owns the socket (it is made non-blocking and closed by :meth:`close`); one
    thread at a time may receive. Sending on the socket (e.g. replies) stays allowed.

    File descriptors: the receiver holds the socket's fd and nothing else (windows are mappings
    without an fd; readiness is checked with a ``select.poll`` object, which holds none). One
    ``epoll`` fd is added, once, the first time it must sleep while a ``MSG_ZEROCOPY`` sender on
    the same socket has completions queued; :meth:`close` releases everything.

    Args:
        sock: a connected TCP (IPv4 or IPv6) socket.
        policy: see :class:`RecvPolicy`.

    Raises:
        UnsupportedSocketError: ``sock`` is not a connected IPv4/IPv6 TCP ``socket.socket``.
        SocketClosedError: ``sock`` is closed.
        TypeError: ``policy`` is not a :class:`RecvPolicy`.
    """

    def __init__(self, sock: socket.socket, policy: RecvPolicy | None = None) -> None:
        if policy is not None and not isinstance(policy, RecvPolicy):
            raise TypeError(f"policy must be a RecvPolicy, got {type(policy).__name__}")
        _check_socket(sock)
        self.policy = policy or RecvPolicy()
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        # The readiness check, and the sleep until POLLERR turns up with nothing to read (see
        # _wait): a poll object is a Python-side fd list, not a kernel object, so it holds no fd.
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLRDHUP)
        self._sleep: select.epoll | None = None  # created by _wait only if it has to
        # the receive calls of the active implementation (C, or the Python reference)
        self._call: ZerocopyCall[Chunk] = zerocopy_call(self._fd, self.policy.copybuf_len, Chunk)
        self._copybufs = CopyBuffers(self.policy.copy_buffers, self.policy.window_bytes)
        self._decider = RxDecider(page_size=PAGE_SIZE, probe_calls=self.policy.probe_calls,
                                  force_zerocopy=self.policy.force_zerocopy,
                                  min_mapped_fraction=self.policy.min_mapped_fraction,
                                  min_cut_run=self.policy.min_cut_run,
                                  min_map_bytes=self.policy.min_map_bytes,
                                  max_backoff=self.policy.map_backoff_max)
        self._ledger = RxLedger()
        self._windows: list[Window] = []
        self._next = 0
        self._windows_mapped = 0
        self._pending: Chunk | None = None  # the copy buffer's tail, not yet all delivered
        self._pending_off = 0  # bytes of it already delivered
        self._pending_skip = 0  # bytes the kernel said to read with recv
        self._pending_error: Exception | None = None
        self._eof = False
        self._lowat = 1
        self._copybuf_ok = True  # offer the copy buffer on the next zero-copy call
        self._inq = 0  # bytes queued after the last zero-copy call (0 after any copy)
        self._closed = False
        # The compiled fast path (src/zcnet/_ext/rxfast.c) runs recv()'s common cases, pages
        # mapped into a free window or a copy into the first copy buffer, without Python code
        # and calls _recv_python for every other case; it is installed as this instance's
        # ``recv`` so that a call reaches C at once (docs/ARCHITECTURE.md, 'Compiled fast
        # path').
        if speedups is not None and type(self).recv is Receiver.recv:
            core = speedups.RxCore(self, self._fd, self.policy.window_bytes,
                                   self.policy.rcvlowat, PAGE_SIZE)
            self.__dict__["recv"] = core.recv

    # -- public API ------------------------------------------------------------------------
    def recv(self, max_bytes: int, timeout: float | None = None) -> Chunk:
        """Receive up to ``max_bytes``: an empty chunk at EOF (and at every call after).

        Args:
            max_bytes: the most bytes to return (> 0); a zero-copy chunk is also capped at
                ``policy.window_bytes``.
            timeout: seconds to wait for data (``None``: forever; 0: only what is there).

        Raises:
            ValueError: ``max_bytes`` <= 0, or ``timeout`` negative or NaN.
            TypeError: ``max_bytes`` is not an int, or ``timeout`` not a number.
            TimeoutExpired: no data before the timeout.
            ConnectionResetByPeer: the connection was reset or lost.
            ReceiveError: another kernel error (the ``OSError`` is the ``__cause__``).
            SocketClosedError: the receiver (or its socket) is closed.
            ZerocopyUnavailable: ``force_zerocopy`` and the kernel cannot map received pages.
        """
        max_bytes = _check_max_bytes(max_bytes)
        timeout = _check_timeout(timeout)
        if self._closed:
            raise SocketClosedError("receiver is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        policy = self.policy
        while True:
            if (self._pending is not None or self._pending_skip or self._eof
                    or self._pending_error is not None):
                chunk = self._deliver_pending(max_bytes)
                if chunk is not None:
                    return chunk
            request = self._decider.request(max_bytes, policy.window_bytes)
            if request is None:
                reason = self._decider.copy_reason(max_bytes)
                window: Window | None = None
            else:
                window, reason = self._free_window()
            if request is None or window is None:
                # Without rcvlowat, try first: a copy that finds data needs no readiness check
                # (one system call less per receive); EAGAIN, errors and EOF come out of it the
                # same way.
                if policy.rcvlowat or (chunk := self._recv_copy(max_bytes, reason)) is None:
                    self._wait(max_bytes, deadline)
                    chunk = self._recv_copy(max_bytes, reason)
                if chunk is not None:
                    return chunk
                continue
            map_len = request.map_len
            # The last zero-copy call said how many bytes were still queued (inq): when that is
            # enough, the wait would return at once.
            if self._inq < max(1, min(policy.rcvlowat, map_len)):
                self._wait(map_len, deadline)
            chunk = self._recv_zerocopy(window, map_len)
            if chunk is not None:
                return chunk

    #: the Python implementation of :meth:`recv` (the compiled fast path's fallback)
    _recv_python = recv

    def recv_into(self, buffer: Buffer, timeout: float | None = None) -> int:
        """Receive into ``buffer`` (a copy by definition); returns the byte count, 0 at EOF.

        Args:
            buffer: a writable, C-contiguous bytes-like object (``bytearray``, writable
                ``memoryview``, ``array``, ``mmap``, numpy array, ...); an empty one returns 0.
            timeout: as for :meth:`recv`.

        Raises:
            InvalidBufferError: ``buffer`` is not a buffer, read-only or not C-contiguous
                (checked first: nothing is received or waited for).
            ValueError, TypeError: a bad ``timeout``.
            TimeoutExpired, ConnectionResetByPeer, ReceiveError, SocketClosedError: as for
                :meth:`recv`.
        """
        view = byte_view(buffer, what="recv_into", writable=True)
        timeout = _check_timeout(timeout)
        if self._closed:
            raise SocketClosedError("receiver is closed")
        if not len(view):
            return 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pending is not None or self._pending_skip:
                pending = self._deliver_pending(len(view))
                if pending is None:
                    continue
                with pending as chunk:
                    n = len(chunk)
                    view[:n] = chunk.view
                return n
            if self._pending_error is not None:
                self._raise_pending()
            if self._eof:
                return 0
            self._wait(len(view), deadline)
            self._inq = 0
            try:
                n = self._sock.recv_into(view)
            except BlockingIOError:
                continue
            except OSError as e:
                raise _translate(e, "recv_into") from e
            if n == 0:
                self._eof = True
            self._ledger.copied(n, "user_buffer")
            return n

    @property
    def buffered(self) -> int:
        """Bytes already received and held here (a poller on :meth:`fileno` cannot see them)."""
        pending = self._pending
        return len(pending) - self._pending_off if pending is not None else 0

    @property
    def stats(self) -> ReceiverStats:
        """A snapshot of the counters."""
        led = self._ledger
        return ReceiverStats(
            bytes_mapped=led.bytes_mapped,
            bytes_copied=led.bytes_copied,
            copy_reasons=dict(led.copy_reasons),
            calls=led.calls,
            windows_in_use=sum(1 for w in self._windows if w.busy()),
            windows_mapped=self._windows_mapped,
            mode=self._decider.mode,
            fallback_reason=self._decider.fallback_reason,
            transient_map_errors=self._decider.transient_failures,
            map_retries=self._decider.retries,
        )

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    def close(self) -> None:
        """Unmap the windows and close the socket (idempotent).

        A window whose views are still alive is left to the GC, which unmaps it once the last
        view is gone. Every fd the receiver holds (the socket, the epoll if one was made) is
        closed here.
        """
        if self._closed:
            return
        self._closed = True
        for window in self._windows:
            window.close()
        self._windows.clear()
        self._copybufs.close()
        self._pending = None
        if self._sleep is not None:
            self._sleep.close()
            self._sleep = None
        self._sock.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _deliver_pending(self, max_bytes: int) -> Chunk | None:
        pending = self._pending
        if pending is not None:
            off = self._pending_off
            left = len(pending) - off
            if not off and left <= max_bytes:
                self._pending = None
                return pending
            # a part (rare: max_bytes below the tail, < 1 page): a chunk over a slice of the
            # tail, which keeps the tail (and so the copy buffer) busy while it lives
            n = min(left, max_bytes)
            part = Chunk(pending.view[off:off + n], False)
            if n == left:
                self._pending = None
                pending.release()
            else:
                self._pending_off = off + n
            return part
        if self._pending_skip:
            n = min(self._pending_skip, max_bytes)
            chunk = self._recv_copy(n, "skip_hint")
            if chunk is not None and len(chunk):
                self._pending_skip -= len(chunk)
                return chunk
            self._pending_skip = 0
        if self._pending_error is not None:
            self._raise_pending()
        if self._eof:
            return Chunk(memoryview(b""), False)
        return None

    def _raise_pending(self) -> None:
        err, self._pending_error = self._pending_error, None
        if err is not None:
            raise err

    def _free_window(self) -> tuple[Window | None, str]:
        """A window no live view refers to, or ``None`` and the copy reason for this receive."""
        windows = self._windows
        n = len(windows)
        for i in range(n):
            idx = (self._next + i) % n
            window = windows[idx]
            if not window.busy():
                self._next = (idx + 1) % n
                return window, ""
        if n >= self.policy.max_windows:
            return None, "windows_busy"
        try:
            window = Window(self._fd, self.policy.window_bytes)
        except OSError as e:
            # Whatever the errno, mapping a window is never a reason to fail the receive: the
            # bytes can be copied. Transient shortages retry later, the rest copy for good.
            if self._decider.map_failed(e.errno):
                return None, "map_backoff"
            self._unsupported(e, "mmap of the socket")
            return None, "copy_mode"
        self._windows_mapped += 1
        windows.append(window)
        self._next = 0
        return window, ""

    def _unsupported(self, e: OSError, what: str) -> None:
        if self.policy.force_zerocopy:
            raise ZerocopyUnavailable(f"{what} failed: {e.strerror or e}") from e
        self._decider.fall_back(f"{what} failed: {e.strerror or e}")

    def _set_lowat(self, nbytes: int) -> None:
        want = max(1, min(self.policy.rcvlowat, nbytes))
        if want != self._lowat:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, want)
            self._lowat = want

    def _wait(self, nbytes: int, deadline: float | None) -> None:
        """Sleep until :meth:`_ready_now` (or raise :class:`TimeoutExpired` at ``deadline``).

        ``poll(2)`` reports ``POLLERR`` whatever was asked, for as long as a ``MSG_ZEROCOPY``
        sender on this socket leaves completions in the error queue (tcp_poll in
        net/ipv4/tcp.c), so a ``poll`` sleep would return at once, again and again. The first
        time that happens the receiver switches to an edge-triggered ``epoll`` (one fd, kept
        until close), which wakes once per state change. A receiver that never shares its
        socket with such a sender never creates it.
        """
        if self.policy.rcvlowat:
            self._set_lowat(nbytes)
        while not self._ready_now():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutExpired("no data before the timeout")
            sleep = self._sleep
            if sleep is not None:
                sleep.poll(-1 if remaining is None else remaining)
                continue
            ms = -1 if remaining is None else max(1, math.ceil(remaining * 1000))
            ready = self._poll.poll(ms)
            if ready and not ready[0][1] & (select.POLLIN | select.POLLRDHUP | select.POLLHUP
                                            | select.POLLNVAL):
                # POLLERR alone: if _ready_now finds nothing either, these are completions.
                if not self._ready_now():
                    self._sleep = sleep = select.epoll(1)
                    # Registration reports the current state once; after that only changes.
                    sleep.register(self._fd,
                                   select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
                else:
                    return

    def _ready_now(self) -> bool:
        """Whether a receive would find data, EOF or a socket error, without blocking.

        ``POLLERR`` alone is ambiguous: a real socket error, or zero-copy completions queued for
        a sender on this same socket (tcp_poll in net/ipv4/tcp.c reports a non-empty error queue
        as ``POLLERR``). A one-byte ``MSG_PEEK`` tells them apart; a real error is raised here
        because the peek consumed it.
        """
        ready = self._poll.poll(0)
        if not ready:
            return False
        events = ready[0][1]
        if events & select.POLLNVAL:
            raise SocketClosedError("the socket was closed under the receiver")
        if events & (select.POLLIN | select.POLLRDHUP | select.POLLHUP):
            return True
        try:
            self._sock.recv(1, _PEEK_FLAGS)
        except BlockingIOError:
            return False
        except OSError as e:
            raise _translate(e, "recv") from e
        return True

    def _recv_copy(self, max_bytes: int, reason: str) -> Chunk | None:
        # Into a reusable copy buffer no live chunk refers to (no allocation per call); with
        # all of them held, into a fresh bytes.
        self._inq = 0
        buf = self._copybufs.get(max_bytes)
        try:
            if buf is not None:
                chunk = self._call.recv_copy(buf, max_bytes)
                if chunk is None:
                    return None
            else:
                chunk = Chunk(memoryview(self._sock.recv(max_bytes)), False)
        except BlockingIOError:
            return None
        except OSError as e:
            self._copy_failed(e)
        n = len(chunk)
        if not n:
            self._eof = True
        else:
            self._ledger.copied(n, reason)
        return chunk

    def _copy_failed(self, e: OSError) -> NoReturn:
        raise _translate(e, "recv") from e

    def _recv_zerocopy(self, window: Window, map_len: int) -> Chunk | None:
        # One zero-copy call and what follows from its answer (None: the caller loops). The
        # compiled fast path (src/zcnet/_ext/rxfast.c) makes the call itself and hands any
        # answer other than "pages mapped, nothing else" to the same two methods.
        try:
            result = self._call.receive(window, map_len, self._copybuf_ok)
        except OSError as e:
            return self._zerocopy_failed(e, map_len)
        return self._zerocopy_done(*result)

    def _zerocopy_failed(self, e: OSError, map_len: int) -> Chunk | None:
        if e.errno == errno.EIO:  # nothing queued and the peer closed
            self._eof = True
            return Chunk(memoryview(b""), False)
        kind = map_error_kind(e.errno)
        if kind == "transient":
            # ENOMEM from vm_insert_pages and the like: a failed call consumed nothing
            # (tcp_zerocopy_receive returns an error only when it mapped and copied
            # nothing), so this receive copies and mapping is retried after a backoff.
            self._decider.map_failed(e.errno)
            return self._recv_copy(map_len, "map_backoff")
        if kind == "unsupported":
            self._unsupported(e, "TCP_ZEROCOPY_RECEIVE")
            return None
        raise _translate(e, "TCP_ZEROCOPY_RECEIVE") from e

    def _zerocopy_done(self, chunk: Chunk | None, mapped: int, tail: Chunk | None, skip: int,
                       inq: int, zc_err: int) -> Chunk | None:
        led = self._ledger
        led.calls += 1
        copied = 0 if tail is None else len(tail)
        if zc_err:  # sock_error(): a negative errno, consumed by this call
            code = abs(zc_err)
            err = OSError(code, os.strerror(code))
            self._pending_error = _translate(err, "TCP_ZEROCOPY_RECEIVE")
        if tail is not None:
            # delivered next (no copy of it: the kernel is not offered the copy buffer again
            # before this chunk and its exports are gone)
            self._pending = tail
            self._pending_off = 0
            led.copied(copied, "copybuf_tail")
        self._pending_skip = skip
        # The kernel fills the copy buffer with the bytes after the mapped ones even when the
        # call stopped because ``length`` was reached (tcp_zc_handle_leftover copies up to
        # copybuf_len of recv_skip_hint): mid-segment, that moves the stream off its page
        # alignment and the next segment's remainder can only be copied (measured: a 256 KiB
        # request every other call mapped nothing). So the copy buffer is offered only when the
        # previous call left nothing queued, i.e. when a short, unmappable tail is likely.
        self._copybuf_ok = inq == 0
        self._inq = inq
        self._decider.observe(mapped, copied + skip)
        if chunk is not None:
            led.mapped(mapped)
            return chunk
        if copied or skip or self._pending_error is not None:
            return None  # delivered by _deliver_pending on the next round
        # Readable but nothing to map, copy or skip: let a plain recv say what is there
        # (data, EOF or an error).
        return self._recv_copy(PAGE_SIZE, "skip_hint")
