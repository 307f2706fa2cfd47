"""A :class:`~zcnet.contrib.dask.transport.FrameTransport` on a :class:`zcnet.aio.ZcStream`.

Theory of operation: ``zcnet.aio`` already owns everything zero-copy about one asyncio TCP
connection — ``MSG_ZEROCOPY`` sends whose buffer stays exported until the kernel reports the
completion (``zcnet._core.tracker``), the copied -> copy fallback and ``ENOBUFS`` policy
(``zcnet._core.txpolicy``), a private epoll watcher so pending completions never spin the loop
(Documentation/networking/msg_zerocopy.rst; docs/ARCHITECTURE.md, 'Transmit: EPOLLERR') — so this
adapter only maps the comm's needs onto it:

* a large frame is one ``stream.send`` (zero-copy above the threshold, its buffer held by the
  stream's ticket until completion); a run of small frames is joined into one buffer (bounded, so
  the join copy stays small) or sent frame by frame;
* reads go through a 64 KiB buffer filled by ``stream.recv_into`` (a prelude and small frames
  cost one system call); the rest of a large frame is read straight into its final, writeable
  buffer (see docs/dask.md for why frames are not handed over as mapped, read-only pages);
* ``close`` is the stream's draining close; ``abort`` resets the connection first when tickets
  are still pending, so that the kernel purges the send queue before the buffers can be freed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence

from zcnet._core.txpolicy import SendPolicy
from zcnet.aio import ZcStream
from zcnet.contrib.dask.config import ZCOptions
from zcnet.contrib.dask.transport import (
    TransportStats,
    host_buffer,
    register_transport,
    retire_transport,
)
from zcnet.errors import ConnectionResetByPeer, SocketClosedError

__all__ = ["AioTransport"]

_RBUF_SIZE = 64 * 1024
_JOIN_LIMIT = 1024 * 1024  # small-frame runs up to this size are joined into one send
_NO_ZEROCOPY = 1 << 62


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
        register_transport(self)

    @property
    def closed(self) -> bool:
        """Whether the transport was closed or aborted."""
        return self._stream is None

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
            completions=s.completions, enobufs=s.enobufs, bytes_in_flight=s.bytes_pending,
            mode=s.mode if self._opts.zerocopy else "copy",
            fallback_reason=s.fallback_reason if self._opts.zerocopy
            else "disabled by configuration")

    async def send(self, buffers: Sequence[memoryview], large: bool) -> None:
        """Send the buffers back to back; each large one is a (zero-copy) stream send."""
        stream = self._check()
        views = [v for v in buffers if v.nbytes]
        if not large and len(views) > 1 and sum(v.nbytes for v in views) <= _JOIN_LIMIT:
            views = [memoryview(b"".join(views))]
        for v in views:
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

    async def recv_frame(self, nbytes: int) -> memoryview:
        """The next ``nbytes`` in a fresh writeable host buffer."""
        buf = host_buffer(nbytes)
        await self.recv_into(buf)
        return buf

    async def close(self) -> None:
        """Drain completions (bounded by the drain timeout), then close the stream."""
        stream = self._stream
        if stream is None:
            return
        try:
            await stream.aclose()
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
        if self._stream is not None:
            self._last = self.stats()
            retire_transport(self, self._last)
        self._stream = None
