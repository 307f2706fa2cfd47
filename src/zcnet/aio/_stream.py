"""The asyncio zero-copy stream: ``MSG_ZEROCOPY`` sends and mapped receives on one TCP socket.

Theory of operation (Documentation/networking/msg_zerocopy.rst, net/ipv4/tcp.c
``tcp_zerocopy_receive``; docs/ARCHITECTURE.md, 'Transmit: EPOLLERR'). :class:`ZcStream` is a thin
I/O edge over the cores the blocking API uses, so policy lives in one place:

* send: the sans-I/O engine of :mod:`zcnet._core.sendop` (pieces, partial sends, ``ENOBUFS``,
  the copy fallback, completions finishing :class:`~zcnet.aio._ticket.AioTicket` s), the same one
  the blocking :class:`zcnet.sender.Sender` drives; this module only performs its steps, with
  ``await`` where the Sender blocks;
* receive: a :class:`zcnet.receiver.Receiver` driven with ``timeout=0`` (its zero-copy call never
  blocks; the timeout only bounds its readiness ``poll``); when it reports no data the stream
  awaits readability and tries again. Mapped chunks obey the same lifetime rules as there.

Readiness and completions come from a :class:`~zcnet.aio._watch.SocketWatcher`: the socket sits
in a private edge-triggered epoll, so pending completions (``EPOLLERR``) neither spin asyncio nor
close uvloop's watcher. Each ``EPOLLERR`` edge reaps the error queue on the loop and finishes
tickets; an ``EPOLLERR`` with an empty queue is a real socket error and wakes readers and writers.
On the io_uring engine (``SendPolicy.engine``) the engine's sends are ``SEND_ZC`` on a ring of the
stream's own, and its results and notifications wake the loop through the ring's eventfd
(:mod:`zcnet.aio._ring`); the rest is the same.

Cancellation: a send that is cancelled (or fails) after some of its bytes were handed to the
kernel leaves a partial message on the wire, so the stream refuses further sends
(:class:`SendError`); its ticket still tracks the bytes in flight and a pool lease passed to it
still goes back to the pool on completion. A cancelled send that had sent nothing leaves the
stream usable. Receives consume data only after their last ``await``, so a cancelled ``recv``
loses nothing; ``readexactly`` keeps partial data in a push-back buffer. ``close()`` drains
completions up to ``SendPolicy.drain_timeout`` before closing the socket (completions not read
before ``close`` are lost, and their buffers are then never reported free); if the stream was
cut short and the peer does not take the rest in that time, it resets the connection so those
buffers come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from zcnet._core.buffers import byte_view
from zcnet._core.sendop import SendEngine, Step
from zcnet._core.txpolicy import ZC_CHUNK, SenderStats, SendPolicy, resolve_engine
from zcnet.aio._ring import RingSends
from zcnet.aio._ticket import AioTicket
from zcnet.aio._watch import READABLE, WRITABLE, SocketWatcher
from zcnet.errors import (
    InvalidCompletionError,
    SocketClosedError,
    TimeoutExpired,
    ZcnetError,
)
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_ZEROCOPY
from zcnet.lowlevel.errqueue import drain_errqueue
from zcnet.lowlevel.tcpstate import QueuedSince, abort
from zcnet.lowlevel.uring import SlabRegistry, open_engine_ring
from zcnet.pool import BufferPool, Lease, LockedFreeListPool
from zcnet.receiver import Chunk, Receiver, ReceiverStats, RecvPolicy

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = Any

__all__ = ["ZC_CHUNK", "ZcStream"]

_T = TypeVar("_T")

_log = logging.getLogger(__name__)


class ZcStream:
    """A connected TCP socket with zero-copy sends and receives, for asyncio and uvloop.

    The stream owns the socket (made non-blocking; closed by :meth:`close`) and must be the only
    user of it. Create it inside a running loop, or use :func:`zcnet.aio.open_connection` /
    :func:`zcnet.aio.start_server`. Use it as an async context manager.

    Args:
        sock: a connected IPv4/IPv6 TCP socket.
        send_policy: see :class:`zcnet.sender.SendPolicy`. Its ``engine`` chooses
            ``MSG_ZEROCOPY`` or io_uring ``SEND_ZC`` sends, as for the blocking Sender; on
            io_uring the ring's completions wake the loop through an eventfd
            (:mod:`zcnet.aio._ring`).
        recv_policy: see :class:`zcnet.receiver.RecvPolicy`.

    Raises:
        ZerocopyUnavailable: ``send_policy.engine`` is ``"io_uring"`` and io_uring cannot be
            used here (the message says why; ``"auto"`` then uses ``MSG_ZEROCOPY``).
    """

    def __init__(self, sock: socket.socket, *, send_policy: SendPolicy | None = None,
                 recv_policy: RecvPolicy | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        send_policy = send_policy if send_policy is not None else SendPolicy()
        self._engine_reason: str | None = None
        # The io_uring engine: a ring of the stream's own, known (or refused) before the socket
        # is touched.
        self._ring: RingSends | None = None
        ring, self._engine_reason = open_engine_ring(resolve_engine(send_policy.engine, os.environ),
                                                     sock)
        if ring is not None:
            self._ring = RingSends(ring, sock.fileno(), self._loop, self._on_ring_completions)
        try:
            # Validates the socket and makes it non-blocking. Driven with timeout=0: its instant
            # readiness check tells our own zero-copy completions (POLLERR) from data.
            self._rx = Receiver(sock, recv_policy)
        except BaseException:
            if self._ring is not None:
                self._ring.close()
            raise
        self._sock = sock
        self._fd = sock.fileno()
        self.send_policy = send_policy
        self._engine: SendEngine[AioTicket] = SendEngine(self.send_policy, stream=True)
        self._ctl = self._engine.ctl
        self._tracker = self._engine.tracker
        self._queued = QueuedSince(sock)  # see Sender._interrupted
        if self._ring is None:  # (SEND_ZC needs no SO_ZEROCOPY)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            except OSError as e:
                self._ctl.disable(f"SO_ZEROCOPY unavailable: {e}")
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._receivers = 0  # receive calls holding or waiting for _recv_lock
        self._completed = asyncio.Event()
        self._rbuf = bytearray()  # received bytes handed back by a cancelled readexactly
        self._eof = False  # write_eof() was called
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._watch = SocketWatcher(self._fd, self._loop, on_error=self._on_epollerr)

    # -- context manager -------------------------------------------------------------------
    async def __aenter__(self) -> ZcStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        state = "closed" if self._closing else self._ctl.mode
        return f"<ZcStream fd={self._fd} {state} pending={self._tracker.pending_tokens}>"

    # -- properties ------------------------------------------------------------------------
    @property
    def send_stats(self) -> SenderStats:
        """Send counters (the blocking Sender's :class:`SenderStats`)."""
        stats = self._ctl.stats()
        if self._ring is not None:
            return self._ring.slabs.stats_of(stats, self._ring.sends_registered)
        if self._engine_reason is not None:
            return dataclasses.replace(stats, engine_reason=self._engine_reason)
        return stats

    @property
    def recv_stats(self) -> ReceiverStats:
        """Receive counters (the blocking Receiver's :class:`ReceiverStats`)."""
        return self._rx.stats

    @property
    def pending(self) -> int:
        """Tickets not yet done."""
        return self._tracker.pending_tokens

    @property
    def watcher(self) -> SocketWatcher:
        """The readiness watcher (its ``wakeups`` counter shows the loop is not spinning)."""
        return self._watch

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closing)."""
        return -1 if self._closing else self._fd

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"socket"``, ``"sockname"`` or ``"peername"``, like asyncio transports."""
        if name == "socket":
            return self._sock
        try:
            if name == "sockname":
                return self._sock.getsockname()
            if name == "peername":
                return self._sock.getpeername()
        except OSError:
            return default
        return default

    def is_closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    # -- send ------------------------------------------------------------------------------
    async def send(self, buf: Buffer | Lease) -> AioTicket:
        """Hand all of ``buf`` to the kernel; return its ticket (``await ticket``: buffer free).

        Returns once every byte is queued in the kernel. With zero-copy the buffer must not be
        modified until the ticket is done. A :class:`zcnet.pool.Lease` passed here belongs to
        the stream: it goes back to its pool when the kernel has released it, also when the
        send fails or is cancelled. Concurrent sends are serialized.

        Raises:
            InvalidBufferError: not a contiguous buffer.
            SocketClosedError: the stream is closing.
            ConnectionResetByPeer: the peer reset the connection (pending tickets fail too).
            SendError: another send failure, or an earlier send was cut short (cancelled or
                failed after part of it was sent), so the byte stream is no longer whole.
        """
        lease: Lease | None = None
        if isinstance(buf, Lease):
            lease = buf
            try:
                mv = byte_view(lease.view, what="send")
            except BaseException:
                lease.release()
                raise
        else:
            mv = byte_view(buf, what="send")
        ticket: AioTicket | None = None
        try:
            self._check_sendable()
            async with self._send_lock:
                self._check_sendable()
                ticket = AioTicket(self._loop, mv.nbytes, False)
                fixed = -1
                if lease is not None and self._ring is not None:
                    fixed = self._ring.fixed_index(lease)
                await self._send_locked(ticket, mv, fixed)
                return ticket
        finally:
            if ticket is None or ticket._view is not mv:
                mv.release()  # not (or no longer) exported for the kernel
            if lease is not None:
                if ticket is None:
                    lease.release()
                else:
                    lease.release_when_done(ticket)

    def register_pool(self, pool: BufferPool | LockedFreeListPool) -> int:
        """Register the slabs ``pool`` has mapped so far with the stream's io_uring ring now,
        as :meth:`zcnet.sender.Sender.register_pool` does; returns the bytes registered (0 on
        the ``MSG_ZEROCOPY`` engine).

        Raises:
            SocketClosedError: the stream is closing.
            PoolError: ``pool`` is closed.
        """
        if self._closing:
            raise SocketClosedError("the stream is closed")
        return SlabRegistry.register_pool(None if self._ring is None else self._ring.slabs, pool)

    def _check_sendable(self) -> None:
        if self._closing:
            raise SocketClosedError("the stream is closed")
        if self._engine.failure is not None:
            raise self._engine.failure
        if self._eof:
            raise SocketClosedError("the stream was shut down for writing (write_eof)")

    def can_write_eof(self) -> bool:
        """Always ``True``: TCP can half-close (see :meth:`write_eof`)."""
        return True

    async def write_eof(self) -> None:
        """Half-close: the peer reads end-of-file after every byte of every earlier send.

        Sends already waiting for their turn go first (sends are serialized); their bytes are
        in the kernel, which sends them before the FIN. Receiving and completions go on; later
        sends raise :class:`SocketClosedError`. Idempotent.

        Raises:
            SocketClosedError: the stream is closing.
            ConnectionResetByPeer, SendError: the connection is already broken.
        """
        if self._eof:
            return
        self._check_sendable()
        async with self._send_lock:
            if self._eof:
                return
            self._check_sendable()
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                raise self._engine.translate(e) from e
            self._eof = True

    async def _send_locked(self, ticket: AioTicket, mv: memoryview, fixed: int = -1) -> None:
        """Perform the engine's steps for one send (the send lock is held); ``fixed``: the
        registered buffer holding ``mv`` (io_uring engine), or -1."""
        engine = self._engine
        op = engine.begin(ticket, mv.nbytes)
        if op.ticket.zerocopy:
            ticket._view = mv  # exported until the kernel releases it
        ring = self._ring
        via_ring = False  # the call in progress is the ring's
        try:
            while True:
                step = op.next()
                if step is Step.SEND:
                    via_ring = ring is not None and op.zerocopy
                    try:
                        if ring is not None and via_ring:
                            with mv[op.start:op.end] as piece:
                                n = await ring.send(piece, fixed)
                        else:
                            n = self._send_call(mv, op.start, op.end,
                                                MSG_ZEROCOPY if op.zerocopy else 0)
                    except OSError as e:  # EAGAIN included: the engine says to wait
                        err = op.failed(e)
                        if err is not None:
                            raise err from e
                        continue
                    op.sent(n)
                elif step is Step.REAP:
                    self._reap()
                elif step is Step.WAIT_COMPLETIONS:
                    await self._reap_wait(op.wait_seconds)
                elif step is Step.WAIT_WRITABLE:
                    await self._wait_writable()
                else:
                    break
        except BaseException as exc:
            if not op.ended:  # cancelled, or an exception raised on the loop meanwhile
                took = None
                if op.in_call:  # the ring knows what its cancelled send took; else the kernel
                    took = ring.took if ring is not None and via_ring else None
                    if took is None:
                        took = self._queued.unrecorded(self._engine.handed)
                op.interrupted(exc, took)
            raise
        engine.finish(op)

    def _send_call(self, mv: memoryview, off: int, end: int, flags: int) -> int:
        """One ``send(2)`` of ``mv[off:end]``; the slice is released before returning, so no
        view of the caller's buffer (or lease) survives in a traceback or a cancelled frame."""
        if off == 0 and end == mv.nbytes:
            return self._sock.send(mv, flags)
        with mv[off:end] as piece:
            return self._sock.send(piece, flags)

    async def _wait_writable(self) -> None:
        self._watch.clear(WRITABLE)
        await self._watch.wait(WRITABLE)

    async def _reap_wait(self, seconds: float) -> None:
        """Reap completions; if there were none, wait up to ``seconds`` for one."""
        if self._reap():
            return
        self._completed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._completed.wait()
        self._reap()

    async def drain(self) -> None:
        """Wait until every ticket is done (all buffers released by the kernel).

        Use ``asyncio.timeout`` for a deadline. Raises the connection's failure
        (:class:`ConnectionResetByPeer`, ...) if it broke with tickets pending.
        """
        tracker = self._tracker
        while True:
            self._reap()
            if not tracker.pending_tokens:
                return
            failure = self._engine.connection_failure
            if failure is not None:
                raise failure
            if self._closing and self._watch.closed:
                raise SocketClosedError("the stream closed with tickets pending")
            self._completed.clear()
            await self._completed.wait()

    # -- completions -----------------------------------------------------------------------
    def _on_ring_completions(self) -> None:
        """Ring callback (a completion was posted): reap."""
        with contextlib.suppress(ZcnetError):
            self._reap()

    def _on_epollerr(self) -> bool:
        """Watcher callback: reap; True (wake everyone) if the queue held no completion."""
        try:
            return self._reap() == 0
        except ZcnetError:
            return True

    def _reap(self) -> int:
        """Read the error queue (io_uring: the ring's notifications) and finish tickets;
        returns the messages read."""
        if self._watch.closed:
            return 0
        self._ctl.reaped()
        try:
            events = drain_errqueue(self._sock) if self._ring is None else self._ring.completions()
        except OSError as e:
            self._engine.translate(e)
            self._completed.set()
            return 0
        if not events:
            return 0
        try:
            self._engine.apply(events)
        except InvalidCompletionError as e:
            _log.error("ZcStream: %s", e)
        self._completed.set()
        return len(events)

    # -- receive ---------------------------------------------------------------------------
    async def recv(self, max_bytes: int) -> Chunk:
        """Receive up to ``max_bytes``: mapped pages where possible, else a copy; empty at EOF.

        The chunk follows :class:`zcnet.receiver.Chunk` rules: release it (or use ``with``)
        before its window can be reused. Cancelling the call loses no data.

        Raises:
            ConnectionResetByPeer, ReceiveError, SocketClosedError.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if not self._receivers and not self._rbuf:
            chunk = self._attempt_now(self._rx.recv, max_bytes)
            if chunk is not None:
                return chunk
        async with self._receiving():
            if self._rbuf:
                data = bytes(self._rbuf[:max_bytes])
                del self._rbuf[:max_bytes]
                return Chunk(memoryview(data), False)
            return await self._when_readable(self._rx.recv, max_bytes)

    @contextlib.asynccontextmanager
    async def _receiving(self) -> AsyncIterator[None]:
        """Hold ``_recv_lock``, counted in ``_receivers`` from before the wait for it."""
        self._receivers += 1
        try:
            async with self._recv_lock:
                yield
        finally:
            self._receivers -= 1

    def _attempt_now(self, attempt: Callable[..., _T], arg: Any) -> _T | None:
        """``attempt(arg, timeout=0)`` (a Receiver method) if the readiness cache says readable.

        ``None`` if it does not, or if the attempt found nothing after all (e.g. only our own
        completions raised the wake-up): then the readiness is forgotten. Called without the
        lock only when no other receive call holds or waits for it: the attempt never awaits,
        so nothing else runs on the loop until it returns (the lock's order is kept and a
        ready receive costs no coroutine switch).
        """
        watch = self._watch
        if self._closing and watch.closed:
            raise SocketClosedError("the stream is closed")
        if watch.is_ready(READABLE):
            try:
                return attempt(arg, timeout=0)
            except TimeoutExpired:
                watch.clear(READABLE)
        return None

    async def _recv_raw(self, max_bytes: int) -> Chunk:
        return await self._when_readable(self._rx.recv, max_bytes)

    async def _when_readable(self, attempt: Callable[..., _T], arg: Any) -> _T:
        """``attempt(arg, timeout=0)`` (see :meth:`_attempt_now`) once the socket is readable."""
        while True:
            result = self._attempt_now(attempt, arg)
            if result is not None:
                return result
            await self._watch.wait(READABLE)

    async def recv_into(self, buffer: Buffer) -> int:
        """Receive into ``buffer`` (a copy by definition); returns the byte count, 0 at EOF."""
        view = byte_view(buffer, what="recv_into", writable=True)
        if not len(view):
            return 0
        if not self._receivers and not self._rbuf:
            n = self._attempt_now(self._rx.recv_into, view)
            if n is not None:
                return n
        async with self._receiving():
            if self._rbuf:
                n = min(len(view), len(self._rbuf))
                view[:n] = self._rbuf[:n]
                del self._rbuf[:n]
                return n
            return await self._recv_into_raw(view)

    async def _recv_into_raw(self, view: memoryview) -> int:
        return await self._when_readable(self._rx.recv_into, view)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes (a copy), like ``asyncio.StreamReader.readexactly``.

        Raises :class:`asyncio.IncompleteReadError` at EOF. Cancelling it loses no data: bytes
        already received are kept for the next read.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        async with self._receiving():
            rbuf = self._rbuf
            while len(rbuf) < n:
                chunk = await self._recv_raw(n - len(rbuf))
                with chunk:
                    if not len(chunk):
                        partial = bytes(rbuf)
                        rbuf.clear()
                        raise asyncio.IncompleteReadError(partial, n)
                    rbuf += chunk.view
            data = bytes(rbuf[:n])
            del rbuf[:n]
            return data

    async def readexactly_into(self, buffer: Buffer) -> None:
        """Fill all of ``buffer`` (a copy); :class:`asyncio.IncompleteReadError` at EOF.

        If cancelled or failing half-way, the bytes already received are kept for the next read.
        """
        view = byte_view(buffer, what="readexactly_into", writable=True)
        total = len(view)
        async with self._receiving():
            got = min(total, len(self._rbuf))
            view[:got] = self._rbuf[:got]
            del self._rbuf[:got]
            try:
                while got < total:
                    n = await self._recv_into_raw(view[got:])
                    if n == 0:
                        partial = bytes(view[:got])
                        got = 0
                        raise asyncio.IncompleteReadError(partial, total)
                    got += n
            except BaseException:
                if got:
                    self._rbuf[:0] = view[:got]
                raise

    # -- close -----------------------------------------------------------------------------
    def close(self) -> None:
        """Start closing: drain completions (``send_policy.drain_timeout``), then close.

        Idempotent; await :meth:`wait_closed` for the end. Tickets still pending after the
        deadline get :class:`SocketClosedError` and never become done (the kernel may still
        read their buffers; leases passed to :meth:`send` then stay out of their pool).
        """
        if self._closing:
            return
        self._closing = True
        self._close_task = self._loop.create_task(self._close())

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` finished (at once after :meth:`abort`)."""
        if self._close_task is None:
            if self._watch.closed:
                return
            raise RuntimeError("wait_closed() before close()")
        await asyncio.shield(self._close_task)

    async def aclose(self) -> None:
        """``close()`` then ``wait_closed()``."""
        self.close()
        await self.wait_closed()

    def abort(self) -> None:
        """Close now without draining completions (pending tickets fail); idempotent.

        A running :meth:`close` then finishes at once.
        """
        self._closing = True
        self._finish_close()

    async def _close(self) -> None:
        try:
            async with asyncio.timeout(self.send_policy.drain_timeout):
                async with self._send_lock:
                    await self.drain()
        except TimeoutError:
            if self._engine.broken_stream and not self._watch.closed:
                # cut short, and the peer does not take the rest: reset; the kernel drops the
                # queue and reports its completions at once (zcnet.lowlevel.tcpstate.abort)
                with contextlib.suppress(OSError):
                    abort(self._sock)
                    self._reap()
            _log.warning("ZcStream.close: %d ticket(s) still pending after %s s",
                         self._tracker.pending_tokens, self.send_policy.drain_timeout)
        except ZcnetError as e:
            _log.debug("ZcStream.close: %s", e)
        finally:
            self._finish_close()

    def _finish_close(self) -> None:
        if self._watch.closed:
            return
        with contextlib.suppress(ZcnetError):
            self._reap()
        self._engine.fail_remaining(
            SocketClosedError("the stream was closed before the kernel released this buffer"))
        self._watch.close()
        if self._ring is not None:
            self._ring.close()
        self._rx.close()
        self._completed.set()
