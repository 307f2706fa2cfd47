"""The ``zc://`` comm's transport: a :class:`~zcnet.contrib.dask.transport.FrameTransport` on a
:class:`zcnet.aio.ZcStream`.

Theory of operation: ``zcnet.aio`` already owns everything zero-copy about one asyncio TCP
connection — ``MSG_ZEROCOPY`` sends whose buffer stays exported until the kernel reports the
completion (``zcnet._core.tracker``), the copied -> copy fallback and ``ENOBUFS`` policy
(``zcnet._core.txpolicy``), the translation of kernel errors (``zcnet.errors``), a private epoll
watcher so pending completions never spin the loop (Documentation/networking/msg_zerocopy.rst;
docs/ARCHITECTURE.md, 'Transmit: EPOLLERR') — so this adapter has no send or completion loop of
its own and only maps the comm's needs onto the stream:

* a large frame is one ``stream.send`` (zero-copy per the stream's policy, its buffer held by the
  stream's ticket until completion); runs of small frames are joined into buffers of at most
  1 MiB (so a message of many small frames costs a few sends, and the join copy stays small);
* reads go through a 64 KiB buffer filled by ``stream.recv_into`` (a prelude and small frames
  cost one system call); the rest of a large frame is read straight into its final, writeable
  buffer (see docs/dask.md for why frames are not handed over as mapped, read-only pages);
* while no message is being read, a watch task notices the peer's orderly close (or a reset) on
  the idle connection and reports it (:meth:`AioTransport.watch_eof`), so a pooled comm whose
  server went away reads as closed, as Dask's TCP comm does (Tornado keeps watching an idle
  stream's read side and runs its close callback at end-of-file). It only peeks
  (``MSG_PEEK``): bytes of a coming message are left for the reader;
* ``close`` waits up to the drain timeout for the stream's tickets, then closes the stream;
  ``abort``, and ``close`` when the deadline passes with tickets still pending, resets the
  connection first (``SO_LINGER`` 0), so that the kernel purges the send queue before the
  buffers can be freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterator, Sequence

from zcnet._core.txpolicy import SendPolicy
from zcnet.aio import READABLE, ZcStream
from zcnet.contrib.dask.config import ZCOptions
from zcnet.contrib.dask.stats import register_transport, retire_transport
from zcnet.contrib.dask.transport import TransportStats
from zcnet.errors import ConnectionResetByPeer, SocketClosedError, ZcnetError

__all__ = ["AioTransport", "host_buffer"]

logger = logging.getLogger(__name__)

_RBUF_SIZE = 64 * 1024
_JOIN_LIMIT = 1024 * 1024  # small-frame runs up to this size are joined into one send
_NO_ZEROCOPY = 1 << 62


def host_buffer(nbytes: int) -> memoryview:
    """A fresh writeable byte buffer (numpy's ``empty`` skips zero-filling when available)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is part of the dask extra
        return memoryview(bytearray(nbytes))
    view: memoryview = np.empty((nbytes,), dtype="u1").data
    return view


def _gathered(views: Sequence[memoryview], limit: int) -> Iterator[memoryview]:
    """``views`` in order, consecutive ones joined into buffers of at most ``limit`` bytes (a
    view that is larger on its own comes alone, unjoined)."""
    run: list[memoryview] = []
    size = 0
    for v in views:
        if run and size + v.nbytes > limit:
            yield run[0] if len(run) == 1 else memoryview(b"".join(run))
            run, size = [], 0
        run.append(v)
        size += v.nbytes
    if run:
        yield run[0] if len(run) == 1 else memoryview(b"".join(run))


class AioTransport:
    """The comm's transport over a ``zcnet.aio`` stream (takes ownership of the socket)."""

    def __init__(self, sock: socket.socket, options: ZCOptions | None = None) -> None:
        opts = options or ZCOptions()
        self._opts = opts
        policy = SendPolicy(
            zerocopy_threshold=opts.zerocopy_threshold if opts.zerocopy else _NO_ZEROCOPY,
            force_zerocopy=opts.force_zerocopy,
            drain_timeout=opts.drain_timeout,
        )
        self._stream: ZcStream | None = ZcStream(sock, send_policy=policy)
        self._sock = sock
        self._rbuf = bytearray(_RBUF_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rstart = self._rend = 0
        self._received = 0
        self._last: TransportStats | None = None
        self._last_engine = "msg_zerocopy"
        self._idle = asyncio.Event()  # set while no message is being read
        self._idle.set()
        self._eof_watch: asyncio.Task[None] | None = None
        register_transport(self)

    @property
    def closed(self) -> bool:
        """Whether the transport was closed or aborted."""
        return self._stream is None

    @property
    def send_engine(self) -> str:
        """The stream's send engine, ``"msg_zerocopy"`` or ``"io_uring"`` (which adds the ring's
        fd and its eventfd to the connection's socket and epoll fd)."""
        if self._stream is None:
            return self._last_engine
        engine: str = self._stream.send_stats.engine
        self._last_engine = engine
        return engine

    @property
    def raw_socket(self) -> socket.socket | None:
        """The underlying socket while open."""
        return self._sock if self._stream is not None else None

    def _check(self) -> ZcStream:
        if self._stream is None:
            raise SocketClosedError("the zc:// transport is closed")
        return self._stream

    def stats(self) -> TransportStats:
        """A snapshot of the counters (the stream's sender counters plus bytes received)."""
        if self._stream is None and self._last is not None:
            return self._last
        s = self._check().send_stats
        zc_total = s.bytes_zerocopy + s.bytes_copied + s.bytes_pending
        return TransportStats(
            bytes_sent=zc_total + s.bytes_plain, bytes_received=self._received,
            bytes_zerocopy=zc_total, bytes_zc_copied=s.bytes_copied,
            bytes_zc_uncopied=s.bytes_zerocopy, zerocopy_calls=s.sends_zerocopy,
            send_calls=s.sends_zerocopy + s.sends_plain,
            completions=s.completions, enobufs=s.enobufs, bytes_in_flight=s.bytes_pending,
            mode=s.mode if self._opts.zerocopy else "copy",
            fallback_reason=s.fallback_reason if self._opts.zerocopy
            else "disabled by configuration")

    async def send(self, buffers: Sequence[memoryview], large: bool) -> None:
        """Send the buffers back to back: each large one is a stream send of its own (zero-copy
        per the stream's policy), small ones are joined up to 1 MiB per send."""
        stream = self._check()
        views = [v for v in buffers if v.nbytes]
        for v in (views if large else _gathered(views, _JOIN_LIMIT)):
            await stream.send(v)

    async def recv_into(self, view: memoryview) -> None:
        """Fill ``view``: first from the read buffer, then from the stream."""
        n = view.nbytes
        pos = min(self._rend - self._rstart, n)
        if pos:
            view[:pos] = self._rview[self._rstart : self._rstart + pos]
            self._rstart += pos
        while pos < n:
            stream = self._check()
            want = n - pos
            direct = want >= _RBUF_SIZE
            got = await stream.recv_into(view[pos:] if direct else self._rview)
            if got == 0:
                raise ConnectionResetByPeer("the peer closed the connection")
            self._received += got
            if direct:
                pos += got
            else:
                k = min(got, want)
                view[pos : pos + k] = self._rview[:k]
                pos += k
                self._rstart, self._rend = k, got

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Mark the reading of one message: the end-of-file watch stands aside meanwhile."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def watch_eof(self, on_eof: Callable[[], None]) -> None:
        """Call ``on_eof()`` (once, on the loop) when the peer closes or resets the connection
        while no message is being read and nothing unread is buffered. Idempotent."""
        if self._eof_watch is None and self._stream is not None:
            self._eof_watch = asyncio.get_running_loop().create_task(
                self._watch_eof(self._stream, on_eof))

    async def _watch_eof(self, stream: ZcStream, on_eof: Callable[[], None]) -> None:
        # Readiness comes from the stream's own watcher (its edge-triggered cache is shared with
        # the stream's receives: we clear it only after our own EAGAIN, as they do). The peek
        # consumes nothing, so the stream stays the only reader of the socket's data.
        watcher = stream.watcher
        peek = socket.MSG_PEEK | socket.MSG_DONTWAIT
        try:
            while self._stream is stream:
                await self._idle.wait()
                await watcher.wait(READABLE)
                if not self._idle.is_set() or self._stream is not stream:
                    continue  # a read started meanwhile: it sees the state itself
                if self._rstart < self._rend:
                    ahead = True  # part of the next message is buffered: a read will come
                else:
                    try:
                        ahead = bool(self._sock.recv(1, peek))
                    except (BlockingIOError, InterruptedError):
                        watcher.clear(READABLE)  # edge-triggered cache: forget after EAGAIN
                        continue
                    except OSError as e:  # reset, timed out: the connection is gone
                        logger.debug("zc:// idle connection failed: %s", e)
                        ahead = False
                if ahead:  # stand aside until the reader has taken that message
                    self._idle.clear()
                    continue
                self._eof_watch = None
                on_eof()
                return
        except (ZcnetError, asyncio.CancelledError):
            return  # the stream closed under the watch
        finally:
            if self._eof_watch is asyncio.current_task():
                self._eof_watch = None

    def _stop_eof_watch(self) -> None:
        task, self._eof_watch = self._eof_watch, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def recv_frame(self, nbytes: int) -> memoryview:
        """The next ``nbytes`` in a fresh writeable host buffer."""
        buf = host_buffer(nbytes)
        await self.recv_into(buf)
        return buf

    async def close(self) -> None:
        """Wait up to the drain timeout for the stream's tickets, then close it; if some are
        still pending after that (or the connection failed with them), reset instead."""
        stream = self._stream
        if stream is None:
            return
        try:
            with contextlib.suppress(TimeoutError, ZcnetError):
                async with asyncio.timeout(self._opts.drain_timeout):
                    await stream.drain()
            if stream.pending:
                logger.warning("zc:// close: %d send(s) still pinned after %.1f s; resetting",
                               stream.pending, self._opts.drain_timeout)
                self.abort()
                return
            await stream.aclose()
        except BaseException:
            self.abort()
            raise
        finally:
            self._finish()

    def abort(self) -> None:
        """Close now; reset the connection first if zero-copy buffers are still in flight."""
        stream = self._stream
        if stream is None:
            return
        if stream.pending:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
        stream.abort()
        self._finish()

    def _finish(self) -> None:
        self._stop_eof_watch()
        if self._stream is not None:
            self._last = self.stats()
            retire_transport(self, self._last)
        self._stream = None
