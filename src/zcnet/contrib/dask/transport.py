"""The byte transport under a ``zc://`` comm: gathered sends, ``MSG_ZEROCOPY`` for large frames,
reads into buffers prepared by the caller.

Theory of operation:

* The comm talks to a :class:`FrameTransport` (send a segment of buffers, receive into a prepared
  buffer, receive one frame into a buffer of the transport's choosing, close, abort), so the
  transport below can be swapped without touching the Dask side.
* :class:`SocketTransport` drives a non-blocking TCP socket from the asyncio loop. Large segments
  are sent with ``MSG_ZEROCOPY`` (Documentation/networking/msg_zerocopy.rst) and a reference to
  their buffers is kept until the kernel reports the completion of every call that carried them
  (``zcnet.lowlevel.errqueue`` reads the error queue, ``zcnet._core.tracker`` maps the wrapping
  counter to segments); a send returns once the kernel has all the bytes, so Dask may drop its
  own references.
  As soon as a completion says the kernel copied (always on loopback), the socket goes back to
  plain sends (Folly's policy, see docs/ARCHITECTURE.md, 'Transmit: copy fallback') unless
  ``force_zerocopy`` is set.
  ``ENOBUFS`` (notification or locked-memory budget exhausted) is back-pressure: completions are
  reaped and that call is sent as a copy.
* Pending completions make the socket report ``EPOLLERR`` until the error queue is drained, and
  some loops (libuv) give up on a watcher that reports an error. The socket is therefore watched
  by ``zcnet.aio.SocketWatcher``: a private, edge-triggered epoll fd that the loop sees as
  readable once per kernel event; each ``EPOLLERR`` edge drains the error queue first and wakes
  readers and writers only for a real socket error, so nothing spins.
* Reads go through a 64 KiB buffer (a prelude and many small frames cost one ``recv``); the part
  of a large frame that is not already buffered is received straight into its final buffer.
* Closing waits (with a deadline) for outstanding completions before the buffers are let go: on
  close the kernel would drop unread completions while still sending from the pinned pages. If
  the deadline passes, or on :meth:`SocketTransport.abort` with sends outstanding, the connection
  is reset (``SO_LINGER`` 0), which purges the send queue, and only then are the buffers released.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from zcnet._core.tracker import CompletionTracker
from zcnet.aio import READABLE, WRITABLE, SocketWatcher
from zcnet.contrib.dask.config import ZCOptions
from zcnet.errors import (
    ConnectionResetByPeer,
    InvalidCompletionError,
    ReceiveError,
    SendError,
    SocketClosedError,
    ZcnetError,
)
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_ZEROCOPY
from zcnet.lowlevel.errqueue import ZerocopyCompletion, drain_errqueue

__all__ = [
    "FrameTransport",
    "SocketTransport",
    "TransportStats",
    "host_buffer",
    "process_stats",
    "register_transport",
    "retire_transport",
]

logger = logging.getLogger(__name__)

_RBUF_SIZE = 64 * 1024
_IOV_MAX = 1024
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNABORTED,
                 errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ESHUTDOWN}


def host_buffer(nbytes: int) -> memoryview:
    """A fresh writeable byte buffer (numpy's ``empty`` skips zero-filling when available)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is part of the dask extra
        return memoryview(bytearray(nbytes))
    view: memoryview = np.empty((nbytes,), dtype="u1").data
    return view


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters of one transport (a snapshot).

    ``bytes_zerocopy`` were handed to the kernel with ``MSG_ZEROCOPY``; of those, completions so
    far reported ``bytes_zc_copied`` as copied by the kernel and ``bytes_zc_uncopied`` as sent
    from the pinned pages.
    """

    bytes_sent: int
    bytes_received: int
    bytes_zerocopy: int
    bytes_zc_copied: int
    bytes_zc_uncopied: int
    zerocopy_calls: int
    completions: int
    enobufs: int
    bytes_in_flight: int
    mode: str
    fallback_reason: str | None


_COUNTERS = ("bytes_sent", "bytes_received", "bytes_zerocopy", "bytes_zc_copied",
             "bytes_zc_uncopied", "zerocopy_calls", "completions", "enobufs",
             "bytes_in_flight")
_LIVE: weakref.WeakSet[FrameTransport] = weakref.WeakSet()
_FINISHED: dict[str, int] = dict.fromkeys(("connections", *_COUNTERS), 0)


def register_transport(t: FrameTransport) -> None:
    """Count ``t`` in :func:`process_stats` while it is open."""
    _LIVE.add(t)
    _FINISHED["connections"] += 1


def retire_transport(t: FrameTransport, final: TransportStats) -> None:
    """``t`` closed: keep its ``final`` counters in :func:`process_stats`."""
    if t in _LIVE:
        _LIVE.discard(t)
        for name in _COUNTERS:
            _FINISHED[name] += getattr(final, name)


def process_stats() -> dict[str, int]:
    """Counters summed over every ``zc://`` transport of this process, open or closed.

    Handy with ``Client.run(process_stats)`` to see what each worker moved and how.
    """
    total = dict(_FINISHED)
    for t in list(_LIVE):
        st = t.stats()
        for name in _COUNTERS:
            total[name] += getattr(st, name)
    return total


class FrameTransport(Protocol):
    """What a ``zc://`` comm needs from the connection below it."""

    async def send(self, buffers: Sequence[memoryview], large: bool) -> None:
        """Send the buffers back to back (sendall semantics); ``large`` marks a big frame."""

    async def recv_into(self, view: memoryview) -> None:
        """Fill ``view`` completely; raises :class:`ConnectionResetByPeer` at EOF."""

    async def recv_frame(self, nbytes: int) -> memoryview:
        """Receive the next ``nbytes`` as one frame, into a buffer the transport chooses."""

    async def close(self) -> None:
        """Graceful close: wait (bounded) for outstanding sends, then close the connection."""

    def abort(self) -> None:
        """Close at once."""

    @property
    def closed(self) -> bool:
        """Whether close() or abort() was called or the connection failed."""

    def stats(self) -> TransportStats:
        """A snapshot of the counters."""


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    while n and views:
        first = views[0]
        if n >= first.nbytes:
            n -= first.nbytes
            views = views[1:]
        else:
            views = [first[n:], *views[1:]]
            n = 0
    return views


class SocketTransport:
    """A :class:`FrameTransport` over a connected, non-blocking TCP socket (owned from now on)."""

    def __init__(self, sock: socket.socket, options: ZCOptions | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = sock
        self._opts = options or ZCOptions()
        sock.setblocking(False)
        self._watch = SocketWatcher(sock.fileno(), self._loop, on_error=self._on_socket_error)
        self._tracker: CompletionTracker[int] = CompletionTracker()
        self._held: dict[int, tuple[memoryview, ...]] = {}  # token -> buffers of one segment
        self._next_token = 0
        self._in_flight = 0
        self._rbuf = bytearray(_RBUF_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self._error: BaseException | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._zc = False
        self._fallback: str | None = None
        self._sent = self._received = self._zc_bytes = self._zc_copied = 0
        self._zc_uncopied = self._zc_calls = self._completions = self._enobufs = 0
        register_transport(self)
        if self._opts.zerocopy:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
                self._zc = True
            except OSError as e:
                self._fallback = f"SO_ZEROCOPY unavailable: {e}"
        else:
            self._fallback = "disabled by configuration"

    # -- state ---------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the transport is closed (locally, or after a fatal error)."""
        return self._sock is None

    @property
    def raw_socket(self) -> socket.socket | None:
        """The underlying socket while open."""
        return self._sock

    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        return TransportStats(
            bytes_sent=self._sent, bytes_received=self._received, bytes_zerocopy=self._zc_bytes,
            bytes_zc_copied=self._zc_copied, bytes_zc_uncopied=self._zc_uncopied,
            zerocopy_calls=self._zc_calls,
            completions=self._completions, enobufs=self._enobufs,
            bytes_in_flight=self._in_flight,
            mode="zerocopy" if self._zc else "copy", fallback_reason=self._fallback)

    def _check(self) -> socket.socket:
        if self._error is not None:
            raise self._error
        if self._sock is None:
            raise SocketClosedError("the zc:// transport is closed")
        return self._sock

    # -- completions ---------------------------------------------------------------------------
    def _reap(self) -> int:
        """Apply the completions waiting on the error queue; returns how many were read."""
        sock = self._sock
        if sock is None:
            return 0
        try:
            events = drain_errqueue(sock)
        except OSError as e:
            logger.debug("error queue read failed: %s", e)
            return 0
        for ev in events:
            if isinstance(ev, ZerocopyCompletion):
                self._complete(ev)
        if (not self._tracker.outstanding and self._drain_waiter is not None
                and not self._drain_waiter.done()):
            self._drain_waiter.set_result(None)
        return len(events)

    def _complete(self, ev: ZerocopyCompletion) -> None:
        try:
            done = self._tracker.complete(ev.lo, ev.hi, ev.copied)
        except InvalidCompletionError as e:
            # never release on a range we cannot place: reset the connection instead
            self._fail(e)
            return
        self._completions += 1
        self._in_flight -= done.nbytes
        for token in done.done:
            self._held.pop(token, None)
        if ev.copied:
            self._zc_copied += done.nbytes
            if self._zc and not self._opts.force_zerocopy:
                self._zc = False
                self._fallback = "kernel copied the zero-copy sends (loopback or no SG)"
        else:
            self._zc_uncopied += done.nbytes

    def _on_socket_error(self) -> bool:
        """``EPOLLERR``: reap completions; True (wake everyone) only for a real socket error."""
        sock = self._sock
        if sock is None or self._reap():
            return False
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            return False
        if self._error is None:
            cause = OSError(err, f"socket error: {errno.errorcode.get(err, err)}")
            exc: ZcnetError = (ConnectionResetByPeer(str(cause)) if err in _RESET_ERRNOS
                               else SendError(str(cause)))
            exc.__cause__ = cause
            self._error = exc
        return True

    def _translate(self, e: OSError, sending: bool) -> ZcnetError:
        if e.errno in _RESET_ERRNOS or isinstance(e, ConnectionError):
            exc: ZcnetError = ConnectionResetByPeer(f"connection lost: {e}")
        elif sending:
            exc = SendError(f"send failed: {e}")
        else:
            exc = ReceiveError(f"receive failed: {e}")
        exc.__cause__ = e
        return exc

    async def _wait(self, write: bool) -> None:
        """After ``EAGAIN``: forget the cached readiness and wait for the next edge."""
        direction = WRITABLE if write else READABLE
        self._watch.clear(direction)
        try:
            await self._watch.wait(direction)
        except SocketClosedError:
            if self._error is not None:
                raise self._error from None
            raise

    # -- sending -------------------------------------------------------------------------------
    async def send(self, buffers: Sequence[memoryview], large: bool) -> None:
        """Send ``buffers`` back to back; large segments with ``MSG_ZEROCOPY`` when enabled.

        Returns once the kernel holds every byte; zero-copy buffers stay referenced until their
        completion arrives.
        """
        views = [v for v in buffers if v.nbytes]
        token = self._next_token
        self._next_token += 1
        try:
            await self._send(views, large, token)
        finally:
            if token in self._held and self._tracker.seal(token) is not None:
                del self._held[token]  # every call it made has already completed

    async def _send(self, views: list[memoryview], large: bool, token: int) -> None:
        while views:
            sock = self._check()
            if self._tracker.outstanding:
                self._reap()
            flags = MSG_ZEROCOPY if (large and self._zc) else 0
            batch = views[:_IOV_MAX]
            try:
                n = sock.sendmsg(batch, (), flags)
            except (BlockingIOError, InterruptedError):
                await self._wait(True)
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS and flags:
                    self._enobufs += 1
                    self._reap()
                    try:
                        n = sock.sendmsg(batch, (), 0)
                    except (BlockingIOError, InterruptedError):
                        await self._wait(True)
                        continue
                    except OSError as e2:
                        raise self._fail(self._translate(e2, True)) from None
                    flags = 0
                else:
                    raise self._fail(self._translate(e, True)) from None
            if flags:
                self._tracker.record_send(token, n)
                if token not in self._held:
                    self._held[token] = tuple(batch)
                self._in_flight += n
                self._zc_calls += 1
                self._zc_bytes += n
            self._sent += n
            views = _advance(views, n)

    # -- receiving -----------------------------------------------------------------------------
    async def recv_into(self, view: memoryview) -> None:
        """Fill ``view``: first from the read buffer, then straight from the socket."""
        n = view.nbytes
        pos = min(self._rend - self._rstart, n)
        if pos:
            view[:pos] = self._rview[self._rstart : self._rstart + pos]
            self._rstart += pos
        while pos < n:
            sock = self._check()
            want = n - pos
            try:
                if want >= _RBUF_SIZE:
                    got = sock.recv_into(view[pos:])
                else:
                    got = sock.recv_into(self._rview)
            except (BlockingIOError, InterruptedError):
                await self._wait(False)
                continue
            except OSError as e:
                raise self._fail(self._translate(e, False)) from None
            if got == 0:
                raise self._fail(ConnectionResetByPeer("the peer closed the connection"))
            self._received += got
            if want >= _RBUF_SIZE:
                pos += got
            else:
                k = min(got, want)
                view[pos : pos + k] = self._rview[:k]
                pos += k
                self._rstart, self._rend = k, got

    async def recv_exactly(self, nbytes: int) -> memoryview:
        """The next ``nbytes`` as a fresh writeable buffer."""
        buf = memoryview(bytearray(nbytes))
        await self.recv_into(buf)
        return buf

    async def recv_frame(self, nbytes: int) -> memoryview:
        """The next ``nbytes`` as one frame in a fresh writeable host buffer."""
        buf = host_buffer(nbytes)
        await self.recv_into(buf)
        return buf

    # -- closing -------------------------------------------------------------------------------
    def _fail(self, exc: ZcnetError) -> ZcnetError:
        """Record a fatal error and tear the connection down (reset if sends are in flight)."""
        if self._error is None:
            self._error = exc
        self.abort()
        return exc

    async def close(self) -> None:
        """Wait up to ``drain_timeout`` for outstanding completions, then close gracefully."""
        if self._sock is None:
            return
        self._reap()
        if self._tracker.outstanding:
            self._drain_waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drain_waiter),
                                       self._opts.drain_timeout)
            except TimeoutError:
                logger.warning("zc:// close: %d bytes still pinned after %.1f s; resetting",
                               self._in_flight, self._opts.drain_timeout)
            finally:
                self._drain_waiter = None
        if self._sock is not None and not self._tracker.outstanding:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self.abort()

    def abort(self) -> None:
        """Close now. With sends in flight the connection is reset so their pages are freed."""
        if self._sock is not None and self._tracker.outstanding:
            self._reap()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._watch.close()
        if self._tracker.outstanding:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self._held.clear()  # after a reset the kernel has purged the send queue
        retire_transport(self, self.stats())
