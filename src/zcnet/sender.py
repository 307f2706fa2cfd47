"""Blocking zero-copy sender: ``MSG_ZEROCOPY`` sends with safe buffer lifetimes.

Theory of operation (Documentation/networking/msg_zerocopy.rst; docs/ARCHITECTURE.md, 'Transmit'):

* :class:`Sender` enables ``SO_ZEROCOPY`` on a connected TCP or UDP socket (if the kernel refuses,
  it works in copy mode and says why in ``stats.fallback_reason``) and sends each buffer with
  ``send(..., MSG_ZEROCOPY)``, sendall-style for TCP (a large buffer is sent in pieces, and partial
  sends continue where they stopped), one datagram per call for UDP (with ``UDP_SEGMENT`` set by
  the caller, a GSO super-datagram of up to 64 KB).
* What to send, when to copy, how ``ENOBUFS`` is absorbed and how completions finish tickets is
  decided by the sans-I/O engine, :mod:`zcnet._core.sendop` (shared with :mod:`zcnet.aio`); this
  module only performs its steps with blocking calls. The common case (the whole buffer accepted
  by one call) is the engine's first step done inline, without creating an operation object.
* The kernel pins the pages instead of copying them and tells, later, on the socket error queue,
  which send calls it no longer references. Until its ticket is done the sender keeps a
  ``memoryview`` of the buffer (a ``bytearray`` cannot be resized meanwhile); writing into the
  buffer before then changes the bytes that go on the wire.
* :meth:`Sender.send_batch` sends many UDP datagrams per system call with ``sendmmsg(2)``
  (net/socket.c ``__sys_sendmmsg``; :mod:`zcnet.lowlevel.sendmmsg`): each message sent is a full
  ``udp_sendmsg`` and takes one counter value, so a call that sent ``k`` zero-copy datagrams is
  recorded as ``k`` single-call tickets. The call stops at the first message that fails; that
  datagram is then sent on its own by the engine (``ENOBUFS``: reap and retry, or copy; anything
  else fails that datagram's ticket only) and the batch resumes after it.
* Completions are read opportunistically (the engine's reap cadence), in :meth:`Sender.poll`, and
  while waiting (:meth:`Ticket.wait`, :meth:`Sender.flush`), which sleeps in ``poll(2)``: a pending
  completion raises ``POLLERR`` on the socket, so there is no busy loop.
* A broken TCP connection fails every pending ticket (``wait()`` raises, e.g.
  :class:`ConnectionResetByPeer`) instead of leaving it pending forever; a ticket still becomes
  ``done`` if the kernel reports its completion later. On UDP a failed datagram (``SendError``)
  does not end the Sender.
* An exception that interrupts a send (``KeyboardInterrupt``, a signal handler's) after some of
  its bytes reached the kernel breaks the Sender: every later send raises :class:`SendError`
  (nothing is ever sent after the gap), and if the peer does not take the queued rest within
  ``drain_timeout``, :meth:`close` resets the connection so those buffers come back
  (docs/ARCHITECTURE.md, 'Transmit: interrupted sends'). If the exception struck between the
  system call and its bookkeeping, the bytes it queued are counted from the kernel's own figures
  (:class:`zcnet.lowlevel.tcpstate.QueuedSince`), so the completion counter stays in step.
* ``close()`` drains completions (up to ``drain_timeout``) before closing the socket, because
  notifications not read before ``close`` are lost; tickets still pending then stay not-done
  forever (their buffers stay exported, never handed back while the kernel might read them).

One thread at a time: a second thread entering a Sender that is in use (or a ticket callback that
sends on the Sender reaping it) gets :class:`ConcurrentUseError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import operator
import os
import select
import socket
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from zcnet._accel import speedups
from zcnet._core.buffers import byte_view
from zcnet._core.sendop import SendEngine, SendOp, Step
from zcnet._core.serial import MASK
from zcnet._core.txpolicy import (
    REAP_EVERY,
    REAP_SHIFT,
    ZC_CHUNK,
    SenderStats,
    SendPolicy,
    resolve_engine,
)
from zcnet.errors import (
    ConcurrentUseError,
    InvalidBufferError,
    InvalidCompletionError,
    SendError,
    SocketClosedError,
    TimeoutExpired,
    UnsupportedSocketError,
    ZcnetError,
)
from zcnet.lowlevel.bufaddr import BufferAddresser
from zcnet.lowlevel.constants import (
    MSG_ZEROCOPY,
    SO_ZEROCOPY,
)
from zcnet.lowlevel.errqueue import drain_errqueue
from zcnet.lowlevel.probes import raw_or_packet_refusal
from zcnet.lowlevel.sendmmsg import MmsgBatch, sendmmsg_available
from zcnet.lowlevel.tcpstate import QueuedSince, abort
from zcnet.lowlevel.uring import SlabRegistry, open_engine_ring, recverr_enabled
from zcnet.pool import BufferPool, Lease, LockedFreeListPool

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12
else:
    Buffer = Any

__all__ = ["BATCH_MAX", "ZC_CHUNK", "SendPolicy", "Sender", "SenderStats", "Ticket"]

_log = logging.getLogger(__name__)

_POLL_MASK: Final = select.POLLERR
_new = object.__new__
#: Datagrams per sendmmsg(2) call of :meth:`Sender.send_batch` (the preallocated array size).
BATCH_MAX: Final = 64
_BATCH_UNAVAILABLE: Final = sendmmsg_available()
_addressof = ctypes.addressof
_from_buffer = ctypes.c_char.from_buffer
_SEND: Final = Step.SEND
_REAP: Final = Step.REAP
_WAIT_COMPLETIONS: Final = Step.WAIT_COMPLETIONS
_WAIT_WRITABLE: Final = Step.WAIT_WRITABLE
#: The compiled send path (zcnet._speedups.TxCore) serves every Sender.
_COMPILED: Final = speedups is not None and sys.platform.startswith("linux")


class _PyTicketBase:
    """The data of a :class:`Ticket` and its completion (the compiled implementation has them in
    C: ``zcnet._speedups.TicketBase``, src/zcnet/_ext/txfast.c)."""

    # Class-level defaults keep creation cheap (one attribute set for a plain send's ticket).
    nbytes: int
    done: bool = False
    zerocopy: bool = False
    copied: bool | None = None
    error: ZcnetError | None = None
    _sender: Sender | None = None
    _view: memoryview | None = None
    _callbacks: list[Callable[[Ticket], None]] | None = None

    def _run(self, fn: Callable[[Ticket], None]) -> None:
        raise NotImplementedError

    def _finish(self, copied: bool) -> None:
        self.done = True
        self.copied = copied if self.zerocopy else None
        view = self._view
        if view is not None:
            self._view = None
            view.release()
        self._sender = None
        callbacks = self._callbacks
        if callbacks is not None:
            self._callbacks = None
            for fn in callbacks:
                self._run(fn)


if TYPE_CHECKING or speedups is None:  # noqa: SIM108 (mypy reads the first branch)
    _TicketBase = _PyTicketBase
else:
    _TicketBase = speedups.TicketBase


class Ticket(_TicketBase):
    """One :meth:`Sender.send` call: tells when its buffer may be reused.

    Attributes:
        nbytes: bytes sent.
        zerocopy: at least one ``MSG_ZEROCOPY`` send call carried part of it.
        done: the kernel no longer references the buffer; it may be reused or freed.
        copied: the kernel copied some of it after all (``None`` while pending or if it was never
            sent with ``MSG_ZEROCOPY``).
        error: set when the connection failed before the ticket completed (the data may not have
            arrived); :meth:`wait` then raises it. ``done`` may still become true later.
    """

    # compiled: the fields are TicketBase's (no instance dict: a batch makes one per datagram)
    __slots__ = ("__weakref__",) if speedups is not None else ()

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        if self.error is not None:
            state += f", error={type(self.error).__name__}"
        return (
            f"<Ticket {self.nbytes} bytes {state} zerocopy={self.zerocopy} copied={self.copied}>"
        )

    @property
    def sender(self) -> Sender | None:
        """The :class:`Sender` whose completions finish this ticket (``None`` once done)."""
        return self._sender

    def wait(self, timeout: float | None = None) -> None:
        """Block until :attr:`done` (reaping completions meanwhile).

        Raises:
            TimeoutExpired: still pending after ``timeout`` seconds.
            ConnectionResetByPeer, SendError, SocketClosedError: the ticket failed (:attr:`error`).
        """
        if self.error is not None:
            raise self.error
        if self.done:
            return
        sender = self._sender
        if sender is None:  # pragma: no cover - a pending ticket always has a sender
            raise SocketClosedError("ticket has no sender")
        sender._enter("wait")
        try:
            sender._wait(lambda: self.done or self.error is not None, timeout, what="ticket")
        finally:
            sender._active = False
        if self.error is not None:
            raise self.error

    def add_done_callback(self, fn: Callable[[Ticket], None]) -> None:
        """Call ``fn(ticket)`` once the ticket is done (at once if it already is).

        Callbacks run in the thread that reaps the completion (inside ``send``, ``poll``,
        ``wait``, ``flush`` or ``close``); exceptions they raise are logged, not propagated.
        """
        if self.done:
            self._run(fn)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def _run(self, fn: Callable[[Ticket], None]) -> None:
        try:
            fn(self)
        except Exception as e:
            self._callback_failed(fn, e)

    @staticmethod
    def _callback_failed(fn: Callable[[Ticket], None], exc: Exception) -> None:
        """A done callback raised ``exc``: logged, not propagated (the compiled finish calls
        this too)."""
        _log.error("Ticket done callback %r failed", fn, exc_info=exc)

    def _fail(self, error: ZcnetError) -> None:
        if self.error is None:
            self.error = error


def _plain_ticket(nbytes: int) -> Ticket:
    """The ticket of a plain (copying) send: done at once."""
    ticket = _new(Ticket)  # Ticket(nbytes) without the __init__ frame
    ticket.nbytes = nbytes
    ticket.done = True
    return ticket


def _as_plain(ticket: Ticket) -> None:
    """A batch ticket whose datagram went out with a copy (or not at all): done, not zero-copy.
    The caller releases the view."""
    ticket.zerocopy = False
    ticket.done = True
    ticket._view = None
    ticket._sender = None


class Sender:
    """Sends buffers over a connected TCP or UDP socket with ``MSG_ZEROCOPY`` when it pays.

    The Sender owns the socket (it puts it in blocking mode and closes it in :meth:`close`) and
    must be the only one sending with ``MSG_ZEROCOPY`` on it, from its creation on. Use it as a
    context manager.

    Raises:
        UnsupportedSocketError: not an IPv4/IPv6 TCP or UDP socket (for a RAW or ``AF_PACKET``
            socket the message states the kernel's ``SO_ZEROCOPY`` rule), or not connected.
        SocketClosedError: the socket is already closed.
        ZerocopyUnavailable: the engine is ``"io_uring"`` and io_uring cannot be used here
            (the message says why in one line).
        ValueError: the policy leaves the engine to ``$ZCNET_SEND_ENGINE``, which names none.
    """

    def __init__(self, sock: socket.socket, policy: SendPolicy | None = None) -> None:
        if not isinstance(sock, socket.socket):
            raise UnsupportedSocketError(f"expected a socket.socket, got {type(sock).__name__}")
        if sock.fileno() < 0:
            raise SocketClosedError("the socket is closed")
        refusal = raw_or_packet_refusal(sock.family, sock.type)  # zcnet doctor's rule too
        if refusal is not None:
            raise UnsupportedSocketError(
                f"{refusal}; a Sender sends on TCP and UDP sockets only, copies included")
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise UnsupportedSocketError(
                f"{sock.family!r}: only AF_INET and AF_INET6 are supported"
            )
        if sock.type == socket.SOCK_STREAM:
            self._stream = True
        elif sock.type == socket.SOCK_DGRAM:
            self._stream = False
        else:
            raise UnsupportedSocketError(f"{sock.type!r}: only TCP and UDP sockets are supported")
        try:
            sock.getpeername()
        except OSError as e:
            raise UnsupportedSocketError(f"the socket is not connected: {e}") from e
        self.policy = policy if policy is not None else SendPolicy()
        # The io_uring engine (docs/ARCHITECTURE.md, 'Transmit: the io_uring engine'): SEND_ZC
        # on a ring of this Sender's, emulating MSG_ZEROCOPY's counter, so that the rest of the
        # engine is the same; a refusal is known before the socket is touched.
        self._slabs: SlabRegistry | None = None
        self._ring, self._engine_reason = open_engine_ring(
            resolve_engine(self.policy.engine, os.environ), sock)
        self._fixed = -1  # the registered buffer of the lease being sent, or -1
        engine: SendEngine[Ticket] = SendEngine(self.policy, stream=self._stream)
        self._engine = engine
        self._ctl = engine.ctl
        self._tracker = engine.tracker
        self._sock = sock
        self._fd = sock.fileno()
        self._closed = False
        self._shut = False
        # largest buffer sent by the one-call fast path (a UDP datagram is always one call)
        self._single_max = ZC_CHUNK if self._stream else sys.maxsize
        # The compiled fast path (src/zcnet/_ext/txfast.c): its send() runs the common case of
        # send() below without Python code and calls it for everything else; it is installed
        # as this instance's ``send`` so that a call reaches C at once (docs/ARCHITECTURE.md,
        # 'Compiled fast path'). reap() is the compiled _read_errqueue. It keeps the two flags
        # below (see _core_flag).
        self._core: Any = None
        if _COMPILED and speedups is not None:
            self._core = speedups.TxCore(
                self, self._fd, self._single_max, engine, Ticket, ring=self._ring,
                waitall=self._stream, lease_type=Lease,
                register_lease=None if self._ring is None else self._register_lease)
            if type(self).send is Sender.send:  # not overridden by a subclass
                self.__dict__["send"] = self._core.send
            if (type(self).send_batch is Sender.send_batch and not self._stream
                    and _BATCH_UNAVAILABLE is None):
                self.__dict__["send_batch"] = self._core.batch
        self._active = False  # a thread is inside a public method (ConcurrentUseError)
        self._unusable = False  # closed, failed or shut down: checked once per send
        # what the kernel queued since this Sender took the socket (TCP: see _interrupted)
        self._queued = QueuedSince(sock) if self._stream else None
        sock.setblocking(True)
        self._send = sock.send
        if not sys.platform.startswith("linux"):
            self._ctl.disable(f"MSG_ZEROCOPY needs Linux (platform is {sys.platform})")
        elif self._ring is not None:
            self._slabs = SlabRegistry(self._ring)  # (SEND_ZC needs no SO_ZEROCOPY)
        elif not self._stream and recverr_enabled(sock):
            # With IP_RECVERR a UDP send that the device queue drops fails with ENOBUFS *after*
            # it took a zero-copy counter value (udp_send_skb reports the error only with
            # recverr); an ENOBUFS from the notification budget takes none. The two cannot be
            # told apart, and one misread value would release the wrong buffers: copy instead.
            self._ctl.disable("IP_RECVERR is set on this UDP socket: a dropped datagram's "
                              "ENOBUFS would be ambiguous for completion tracking")
        else:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            except OSError as e:
                self._ctl.disable(f"SO_ZEROCOPY unavailable: {e}")
        self._poller = select.poll()
        self._poller.register(self._fd, _POLL_MASK)
        # send_batch on UDP: preallocated mmsghdr/iovec arrays and Py_buffer, made on first use
        self._mmsg: MmsgBatch | None = None
        self._addresser: BufferAddresser | None = None

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._ctl.mode
        return f"<Sender fd={self._fd} {state} pending={self._tracker.pending_tokens}>"

    # -- public API ------------------------------------------------------------------------
    @property
    def stats(self) -> SenderStats:
        """A frozen snapshot of the counters (see :class:`SenderStats`)."""
        stats = self._ctl.stats()
        slabs = self._slabs
        if slabs is not None:
            return slabs.stats_of(stats, self._ring.sends_registered)
        if self._engine_reason is not None:
            return dataclasses.replace(stats, engine_reason=self._engine_reason)
        return stats

    @property
    def pending(self) -> int:
        """Tickets not yet done."""
        return self._tracker.pending_tokens

    @property
    def failure(self) -> ZcnetError | None:
        """Why the Sender refuses to send (a lost connection, a send cut short), or ``None``."""
        return self._engine.failure

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    def send(self, buf: Buffer | Lease) -> Ticket:
        """Send all of ``buf`` (one datagram on UDP) and return its :class:`Ticket`.

        ``buf`` must be a C-contiguous buffer (``bytes``, ``bytearray``, ``memoryview``, ``mmap``,
        ``array``, a NumPy array...) or a :class:`zcnet.pool.Lease`; it is sent as its raw bytes.
        Returns when every byte was handed to the kernel; with zero-copy the buffer must not be
        modified until ``ticket.done`` (modifying it changes what is sent). A lease passed here
        belongs to the Sender: it goes back to its pool once the kernel released it (at once for
        a copying send), also when the send fails.

        Raises:
            InvalidBufferError: not a buffer, or not contiguous.
            SocketClosedError: the Sender was closed (or shut down for writing).
            ConnectionResetByPeer: the peer reset the connection (pending tickets fail too).
            SendError: any other send failure (the OSError is the ``__cause__``), or an earlier
                send was cut short, so the byte stream is no longer whole.
            ConcurrentUseError: another thread is using this Sender.
        """
        if self._unusable:
            self._raise_unusable()
        if self._active:
            raise ConcurrentUseError("Sender.send while this Sender is in use by another call")
        self._active = True
        try:
            tb = type(buf)
            if tb is bytes or tb is bytearray:
                nbytes = len(buf)  # type: ignore[arg-type, unused-ignore]
                mv = None
            elif tb is memoryview:
                try:
                    if not buf.c_contiguous:  # type: ignore[union-attr]
                        raise InvalidBufferError("the memoryview is not C-contiguous")
                    nbytes = buf.nbytes  # type: ignore[union-attr]
                except ValueError as e:  # released
                    raise InvalidBufferError(f"unusable memoryview: {e}") from e
                mv = None
            elif tb is Lease:
                return self._send_lease(buf)  # type: ignore[arg-type, unused-ignore]
            else:
                mv = byte_view(buf, what="send")  # type: ignore[arg-type, unused-ignore]
                nbytes = mv.nbytes
            ctl = self._ctl
            if ctl.zerocopy and nbytes >= ctl.threshold and nbytes:
                if mv is None:
                    mv = memoryview(buf)  # type: ignore[arg-type, unused-ignore]  # ours
                if mv.ndim != 1 or mv.itemsize != 1:
                    mv = mv.cast("B")
                ticket = _new(Ticket)  # Ticket(nbytes) without the __init__ frame
                ticket.nbytes = nbytes
                ticket.zerocopy = True
                ticket._sender = self
                ticket._view = mv
                if nbytes > self._single_max or self._ring is not None:
                    return self._drive(ticket, mv, None)
                # The engine's first step, inline: the whole buffer in one zero-copy call.
                # Between the call and record_single an exception can only strike at a call
                # boundary (see SendOp.interrupted); record_single itself changes state only
                # after its entry, so either the call is recorded or it is not at all.
                try:
                    sent = self._send(mv, MSG_ZEROCOPY)
                    if sent == nbytes:
                        self._tracker.record_single(ticket, nbytes)
                except OSError as e:
                    return self._drive(ticket, mv, e)
                except BaseException as exc:
                    self._first_call_interrupted(ticket, nbytes, exc)
                    raise
                if sent != nbytes:  # partial TCP send: the engine continues
                    return self._drive(ticket, mv, None, first=sent)
                engine = self._engine
                engine.handed += nbytes
                ctl.sends_zerocopy += 1  # ctl.on_zerocopy_sent(nbytes), inlined
                ctl.bytes_pending += nbytes
                if ctl.enobufs_round or ctl.enobufs_copies:
                    ctl.enobufs_round = ctl.enobufs_copies = 0
                units = ctl.reap_units + 1 + (nbytes >> REAP_SHIFT)  # ctl.reap_due, inlined
                ctl.reap_units = units
                if units >= REAP_EVERY:
                    self._reap()
                return ticket
            # a copying send: the engine's first step, inline
            try:
                sent = self._send(buf)  # type: ignore[arg-type, unused-ignore]
            except OSError as e:
                ticket = _plain_ticket(nbytes)
                mv = mv if mv is not None else byte_view(buf, what="send")  # type: ignore[arg-type, unused-ignore]
                return self._drive(ticket, mv, e)
            except BaseException as exc:
                ticket = _plain_ticket(nbytes)
                self._first_call_interrupted(ticket, nbytes, exc)
                raise
            if sent != nbytes:
                ticket = _plain_ticket(nbytes)
                mv = mv if mv is not None else byte_view(buf, what="send")  # type: ignore[arg-type, unused-ignore]
                return self._drive(ticket, mv, None, first=sent)
            self._engine.handed += nbytes
            ctl.sends_plain += 1
            ctl.bytes_plain += nbytes
            ticket = _plain_ticket(nbytes)
            return ticket
        finally:
            self._active = False

    def _send_lease(self, lease: Lease) -> Ticket:
        """:meth:`send` of a pool lease, through the engine (the caller holds the flag)."""
        mv = byte_view(lease.view, what="send")  # our export: the ticket holds it
        nbytes = mv.nbytes
        ctl = self._ctl
        ticket: Ticket
        if ctl.zerocopy and nbytes >= ctl.threshold and nbytes:
            ticket = Ticket(nbytes)
            ticket.zerocopy = True
            ticket._sender = self
            ticket._view = mv
        else:
            ticket = _plain_ticket(nbytes)
        if self._slabs is not None and ticket.zerocopy:
            self._fixed = self._register_lease(lease)
        try:
            self._drive(ticket, mv, None)
        finally:
            self._fixed = -1
            # a ticket that is done (or never went zero-copy) holds no kernel reference
            if ticket.done or not ticket.zerocopy:
                mv.release()
            # also when done: the lease then returns at once, or is held back while the caller
            # still holds an export of it (a plain release would raise after the bytes went out)
            lease.release_when_done(ticket)
        return ticket

    def register_pool(self, pool: BufferPool | LockedFreeListPool) -> int:
        """Register the slabs ``pool`` has mapped so far with this Sender's io_uring ring now.

        On the io_uring engine a slab is otherwise registered by the first send of one of its
        leases, inside that send (the kernel pins its pages then: about 5 ms for a 4 MiB slab
        whose pages were never touched). Registering up front, e.g. after acquiring and filling
        the leases of a transfer, takes that out of the sending loop. Slabs the pool maps later
        are still registered by their first send.

        Returns the bytes this call registered: 0 on the ``MSG_ZEROCOPY`` engine (nothing is
        registered there), for slabs already registered, or when the kernel refused
        (:attr:`SenderStats.registration_reason` then says why; leases go out unregistered).

        Raises:
            SocketClosedError: the Sender is closed.
            PoolError: ``pool`` is closed.
        """
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        return SlabRegistry.register_pool(self._slabs, pool)

    def shutdown(self) -> None:
        """Half-close a TCP connection: the peer reads end-of-file after every byte sent.

        Every byte of every :meth:`send` that returned is already in the kernel, which sends it
        before the FIN. Completions are still read afterwards (:meth:`flush`, :meth:`close`);
        later sends raise :class:`SocketClosedError`. Idempotent.

        Raises:
            UnsupportedSocketError: a UDP Sender (datagrams have no end-of-file).
            SocketClosedError: the Sender is closed.
            ConnectionResetByPeer, SendError: the connection is already broken.
        """
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        if not self._stream:
            raise UnsupportedSocketError("shutdown() needs a TCP Sender: UDP has no end-of-file")
        if self._shut:
            return
        if self._engine.failure is not None:
            raise self._engine.failure
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise self._engine.translate(e) from e
        self._shut = True
        self._unusable = True

    # -- the engine's steps, blocking --------------------------------------------------------
    def _drive(
        self, ticket: Ticket, mv: memoryview, error: OSError | None, first: int = 0,
    ) -> Ticket:
        """Run the engine's send of ``mv`` for ``ticket`` to its end, waiting by blocking.

        ``error`` or ``first`` is the outcome of a first call the fast path already made (a
        failure, or a partial send of ``first`` bytes), fed to the operation as its first step.
        """
        engine = self._engine
        op = engine.begin(ticket, mv.nbytes, zerocopy=ticket.zerocopy)
        send = self._send
        ring = self._ring
        try:
            if error is not None or first:
                op.next()
                if error is not None:
                    err = op.failed(error)
                    if err is not None:
                        raise err from error
                else:
                    op.sent(first)
            while True:
                step = op.next()
                if step is _SEND:
                    start, end = op.start, op.end
                    try:
                        if ring is not None and op.zerocopy:
                            with mv[start:end] as piece:
                                n = ring.send(self._fd, piece, self._fixed, self._stream)
                        elif start == 0 and end == mv.nbytes:
                            n = send(mv, MSG_ZEROCOPY if op.zerocopy else 0)
                        else:
                            with mv[start:end] as piece:
                                n = send(piece, MSG_ZEROCOPY if op.zerocopy else 0)
                    except OSError as e:
                        err = op.failed(e)
                        if err is not None:
                            raise err from e
                        continue
                    op.sent(n)
                elif step is _REAP:
                    self._reap()
                elif step is _WAIT_COMPLETIONS:
                    self._reap_wait(op.wait_seconds)
                elif step is _WAIT_WRITABLE:
                    self._wait_writable()
                else:
                    break
        except BaseException as exc:
            if not op.ended:  # not a failure the operation reported itself (e.g. a signal)
                self._interrupted(op, exc)
            self._sync_unusable()
            raise
        engine.finish(op)
        self._sync_unusable()
        return ticket

    def _drive_buf(self, ticket: Ticket, buf: Buffer, error: OSError | None, first: int) -> Ticket:
        """:meth:`_drive` for the compiled fast path's plain send, which holds no view."""
        return self._drive(ticket, byte_view(buf, what="send"), error, first)

    def _first_call_interrupted(
        self, ticket: Ticket, nbytes: int, exc: BaseException, took: int | None = None,
    ) -> None:
        """An exception left the fast path's first call before it was recorded.

        ``took``: what the call handed to the kernel when that is known (the compiled path
        knows it: 0, its call failed with ``EINTR`` and a signal handler raised), else ``None``:
        the kernel's own count decides (TCP), or the call is uncertain (UDP).
        """
        op = self._engine.begin(ticket, nbytes, zerocopy=ticket.zerocopy)
        op.next()  # the first call's piece, now in flight
        if took is None:
            self._interrupted(op, exc)
        else:
            op.interrupted(exc, took)
            self._sync_unusable()

    def _interrupted(self, op: SendOp[Ticket], exc: BaseException) -> None:
        """Settle ``op`` after an exception that is not a send error (see SendOp.interrupted)."""
        queued = self._queued
        took = (queued.unrecorded(self._engine.handed)
                if op.in_call and queued is not None else None)
        ring = self._ring
        if op.in_call and ring is not None and op.zerocopy and took is None:
            # UDP on io_uring: what the call took is known exactly, from the ring (an exception
            # inside its wait) or from whether it took a counter value (one after it returned)
            took = ring.took
            if took is None:
                took = op.end - op.start if self._unrecorded_ring_sends() else 0
        op.interrupted(exc, took)
        self._sync_unusable()

    def _sync_unusable(self) -> None:
        if self._engine.failure is not None:
            self._unusable = True

    def send_batch(self, bufs: Sequence[Buffer | Lease]) -> list[Ticket]:
        """Send each buffer of ``bufs`` as :meth:`send` would; one :class:`Ticket` per buffer.

        On UDP each buffer is one datagram (with ``UDP_SEGMENT``, a GSO super-datagram) and the
        datagrams go out in order, up to :data:`BATCH_MAX` per ``sendmmsg(2)`` system call
        (zero-copy ones with ``MSG_ZEROCOPY``, the others in copying calls), so Python's fixed
        cost per system call is paid once per batch instead of once per datagram. On TCP (or
        where ``sendmmsg`` is missing) it loops over :meth:`send`.

        Elements may be :class:`zcnet.pool.Lease` s, which go back to their pool as with
        :meth:`send`. Every buffer is checked before anything is sent. A datagram the kernel
        refuses (e.g. ``EMSGSIZE``, or an ICMP error reported by that call) does not stop the
        batch: its ticket
        is done with :attr:`Ticket.error` set (a :class:`SendError`, the ``OSError`` as its
        cause; :meth:`Ticket.wait` raises it) and the datagrams after it are still sent.
        ``ENOBUFS`` is absorbed as in :meth:`send`; nothing is dropped silently.

        Raises:
            InvalidBufferError: an element is not a C-contiguous buffer (nothing was sent).
            SocketClosedError: the Sender (or its socket) was closed.
            ConnectionResetByPeer, SendError: TCP only, as :meth:`send`.
            ConcurrentUseError: another thread is using this Sender.
        """
        if self._unusable:
            self._raise_unusable()
        if self._active:
            raise ConcurrentUseError("Sender.send_batch while this Sender is in use")
        if self._stream or _BATCH_UNAVAILABLE is not None:
            checked: list[Buffer | Lease] = []
            views: list[memoryview] = []
            try:
                for buf in bufs:
                    if type(buf) is Lease:
                        byte_view(buf.view, what="send_batch").release()
                        checked.append(buf)
                    else:
                        views.append(byte_view(buf, what="send_batch"))  # type: ignore[arg-type, unused-ignore]
                        checked.append(views[-1])
            except InvalidBufferError:
                for mv in views:
                    mv.release()
                raise
            return [self.send(b) for b in checked]
        self._active = True
        try:
            return self._send_batch_udp(bufs)
        finally:
            self._active = False

    def _send_batch_udp(self, bufs: Sequence[Buffer | Lease]) -> list[Ticket]:
        """send_batch on UDP with sendmmsg(2) (the caller holds the re-entrancy flag)."""
        core = self._core
        if core is not None:
            # the compiled path: a batch of zero-copy datagrams, plain buffers or leases (else
            # None)
            done: list[Ticket] | None = core.send_batch(bufs)
            if done is not None:
                return done
        views: list[memoryview] = []
        leases: list[tuple[int, Lease]] = []
        fixed: list[int] | None = None if self._slabs is None else []
        ro = self._addresser
        if ro is None:
            ro = self._addresser = BufferAddresser()
        readonly = ro.readonly
        ctl = self._ctl
        threshold = ctl.threshold
        zerocopy = ctl.zerocopy
        sizes: list[int] = []
        addrs: list[int] = []
        tickets: list[Ticket] = []
        add_view = views.append
        add_size = sizes.append
        add_addr = addrs.append
        add_ticket = tickets.append
        plain = 0
        # One pass: own export of each buffer (held by its ticket), size, address (from_buffer
        # and PyObject_GetBuffer refuse non-contiguous buffers), and the ticket itself.
        try:
            for buf in bufs:
                if type(buf) is Lease:
                    leases.append((len(views), buf))
                    if fixed is not None:
                        fixed.append(self._register_lease(buf))
                    buf = buf.view
                elif fixed is not None:
                    fixed.append(-1)
                mv = memoryview(buf)  # type: ignore[arg-type, unused-ignore]
                add_view(mv)
                nb = mv.nbytes
                add_size(nb)
                add_addr(readonly(mv) if mv.readonly or not nb else _addressof(_from_buffer(mv)))
                t: Ticket
                if zerocopy and nb >= threshold and nb:
                    t = _new(Ticket)
                    t.nbytes = nb
                    t.zerocopy = True
                    t._sender = self
                    t._view = mv
                else:
                    plain += 1
                    t = _plain_ticket(nb)
                add_ticket(t)
        except (TypeError, ValueError, BufferError) as e:
            for mv in views:
                mv.release()
            raise InvalidBufferError(
                f"expected C-contiguous bytes-like buffers, got {type(buf).__name__}: {e}"
            ) from e
        n = len(views)
        self._batch_pos = i = 0
        try:
            while i < n:
                j = min(n, i + BATCH_MAX)
                zc = tickets[i].zerocopy
                if plain:  # a run of datagrams of the same kind
                    k = i + 1
                    while k < j and tickets[k].zerocopy is zc:
                        k += 1
                    j = k
                i = self._batch_run(tickets, views, sizes, addrs, i, j, zc and ctl.zerocopy,
                                    fixed)
        except BaseException as exc:
            self._batch_unsent(tickets, self._batch_pos, exc)
            raise
        finally:
            for k, lease in leases:
                lease.release_when_done(tickets[k])  # as in _send_lease
        return tickets

    def _batch_run(
        self, tickets: list[Ticket], views: list[memoryview], sizes: list[int], addrs: list[int],
        i: int, j: int, zc: bool, fixed: list[int] | None = None,
    ) -> int:
        """sendmmsg datagrams ``i .. j-1``, all zero-copy or all plain; returns where it stopped
        (``j``, or earlier if the socket switched to copy mode meanwhile). Progress is kept in
        ``self._batch_pos``. A datagram the kernel refuses is sent on its own by the engine.
        On io_uring, zero-copy datagrams go as one linked submission of SEND_ZC per call
        instead (``fixed``: each one's registered buffer, or -1)."""
        batch = self._mmsg
        if batch is None:
            batch = self._mmsg = MmsgBatch(BATCH_MAX)
        m = 2 * (j - i)
        words = batch.words
        words[0:m:2] = array("Q", addrs[i:j])
        words[1:m:2] = array("Q", sizes[i:j])
        fd = self._fd
        ctl = self._ctl
        engine = self._engine
        flags = MSG_ZEROCOPY if zc else 0
        ring = self._ring if zc else None
        off = i
        while off < j:
            try:
                if ring is not None:
                    sent: int = ring.send_many(fd, views, fixed, off, j)
                else:
                    sent = batch.send(fd, off - i, j - off, flags)
                if zc:
                    self._tracker.record_batch(tickets[off:off + sent], sizes[off:off + sent])
            except OSError as e:
                self._batch_failed(tickets[off], views[off], e)
                self._batch_pos = off = off + 1
                if zc and not ctl.zerocopy:
                    return off
                continue
            except BaseException:
                if ring is not None:  # the ring knows how many went: each took a value
                    taken = self._unrecorded_ring_sends()
                    self._tracker.record_batch(tickets[off:off + taken], sizes[off:off + taken])
                    self._batch_pos = off + taken
                    raise
                if zc:  # up to j - off datagrams may have taken counter values, in order
                    self._tracker.record_batch(tickets[off:j], sizes[off:j])
                    self._tracker.uncertain_tail = True
                    ctl.disable("a sendmmsg of zero-copy datagrams was interrupted before its "
                                "result was recorded")
                    self._batch_pos = j
                raise
            stop = off + sent
            done_bytes = sum(sizes[off:stop])
            engine.handed += done_bytes
            self._batch_pos = stop
            if zc:
                ctl.on_zerocopy_batch(sent, done_bytes)
                off = stop
                if ctl.reap_due(done_bytes, sent):
                    self._reap()
                    if not ctl.zerocopy:
                        return off
            else:
                for k in range(off, stop):
                    t = tickets[k]
                    if t.zerocopy:  # meant for zero-copy, sent after the switch to copy mode
                        _as_plain(t)
                    views[k].release()
                ctl.on_plain_sent(done_bytes, sent)
                off = stop
        return off

    def _batch_failed(self, t: Ticket, mv: memoryview, e: OSError) -> None:
        """The datagram of ``t`` failed in a sendmmsg: the engine sends it alone (ENOBUFS: reap
        and retry, or copy; another error fails this datagram's ticket only)."""
        try:
            self._drive(t, mv, e)
        except SocketClosedError:
            raise
        except ZcnetError:
            pass  # t.error says why; the batch goes on
        if not t.zerocopy and not t.done:
            _as_plain(t)
        if not t.zerocopy:
            mv.release()

    @staticmethod
    def _batch_unsent(tickets: Sequence[Ticket], pos: int, exc: BaseException) -> None:
        """An exception stopped a batch at datagram ``pos``: the datagrams never handed to the
        kernel are done, not sent (their error says so)."""
        unsent = SendError(f"not sent: the batch stopped at datagram {pos} "
                           f"({type(exc).__name__})")
        for t in tickets[pos:]:
            if not t.done and t.error is None:
                view = t._view
                _as_plain(t)
                t.error = unsent
                if view is not None:
                    view.release()

    # -- completions and waiting -------------------------------------------------------------
    def poll(self) -> int:
        """Read pending completions without blocking; returns the number of tickets completed."""
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        self._enter("poll")
        try:
            return self._reap()
        finally:
            self._active = False

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every ticket is done.

        After a connection failure it raises that failure (once pending tickets are reaped).

        Raises:
            TimeoutExpired: tickets still pending after ``timeout`` seconds.
            ConnectionResetByPeer, SendError: the connection failed with tickets pending.
        """
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        tracker = self._tracker
        self._enter("flush")
        try:
            self._wait(lambda: not tracker.pending_tokens, timeout, what="flush")
        finally:
            self._active = False
        failure = self._engine.connection_failure
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Drain completions (at most ``policy.drain_timeout`` seconds), then close the socket.

        If an earlier send was cut short (the byte stream is broken) and completions are still
        pending after the drain, the connection is reset: the kernel drops the queued bytes of
        the truncated stream and reports their completions at once. Tickets still
        pending afterwards never become done (the kernel may still read their buffers) and get
        a :class:`SocketClosedError` as :attr:`Ticket.error`. Idempotent.

        Raises:
            ConcurrentUseError: another thread is using this Sender.
        """
        if self._closed:
            return
        self._enter("close")
        engine = self._engine
        tracker = self._tracker
        try:
            if tracker.pending_tokens:
                try:
                    self._wait(
                        lambda: not tracker.pending_tokens, self.policy.drain_timeout,
                        what="close", tolerate_failure=True,
                    )
                except TimeoutExpired:
                    if not engine.broken_stream:
                        raise
                    # The stream was cut short and the peer does not take the rest: reset.
                    # The kernel drops the queue and reports its completions at once.
                    abort(self._sock)
                    self._wait(lambda: not tracker.pending_tokens, 1.0, what="close",
                               tolerate_failure=True)
        except (ZcnetError, OSError) as e:
            _log.warning("Sender.close: %s", e)
        finally:
            left = engine.fail_remaining(SocketClosedError(
                "the Sender was closed before the kernel released this buffer"))
            if left:
                _log.warning("Sender.close: %d ticket(s) never completed", left)
            self._closed = True
            self._unusable = True
            self._active = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._poller.unregister(self._fd)
            self._sock.close()
            if self._ring is not None:
                # in-flight notifications now never arrive: their tickets stay pending (above)
                self._ring.close()

    # -- internals -------------------------------------------------------------------------
    def _register_lease(self, lease: Lease) -> int:
        """The registered-buffer index of ``lease``'s slab on the ring, registering the slab now
        (-1: sent unregistered; the compiled send_batch calls this for a new slab)."""
        slabs = self._slabs
        return -1 if slabs is None else slabs.index_of(lease._block.slab)

    def _unrecorded_ring_sends(self) -> int:
        """Sends of the ring that took a counter value the tracker has not recorded yet."""
        return int((self._ring.counter - self._tracker.next_value) & MASK)

    def _enter(self, what: str) -> None:
        if self._active:
            raise ConcurrentUseError(f"Sender.{what} while this Sender is in use by another call")
        self._active = True

    def _raise_unusable(self) -> None:
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        failure = self._engine.failure
        if failure is not None:
            raise failure
        if self._shut:
            raise SocketClosedError("the Sender was shut down for writing")

    def _wait_writable(self) -> None:
        p = select.poll()
        p.register(self._fd, select.POLLOUT | select.POLLERR)
        p.poll(100)
        self._reap()

    def _reap_wait(self, seconds: float) -> None:
        """Reap completions; if there were none, wait up to ``seconds`` (POLLERR) and reap."""
        if not self._reap_messages():
            if self._ring is not None:
                self._ring.wait(seconds)
            else:
                self._poller.poll(max(1, math.ceil(seconds * 1000)))
            self._reap()

    def _reap(self) -> int:
        """Read the error queue and apply it; returns the number of tickets completed."""
        return self._read_errqueue()[1]

    def _reap_messages(self) -> int:
        """Like :meth:`_reap`, but returns the number of messages read."""
        return self._read_errqueue()[0]

    def _read_errqueue(self) -> tuple[int, int]:
        """Read the error queue (io_uring: the ring's notifications) and apply it: (messages
        read, tickets completed)."""
        try:
            core = self._core
            if core is not None:  # (it reads the ring on io_uring: a ring implies a core)
                messages, finished = core.reap()
                return messages, finished
            self._ctl.reap_units = 0
            events = drain_errqueue(self._sock)
            if not events:
                return 0, 0
            return len(events), self._engine.apply(events)
        except (OSError, InvalidCompletionError) as e:
            self._reap_failed(e)

    def _reap_failed(self, e: BaseException) -> NoReturn:
        """Raise what a failed error-queue read means (the compiled reap calls it too)."""
        if isinstance(e, OSError):
            err = self._engine.translate(e)
            self._sync_unusable()
            raise err from e
        if isinstance(e, InvalidCompletionError):  # the engine refuses further sends
            self._sync_unusable()
        raise e

    def _check_socket_error(self) -> bool:
        """Consume a pending socket error (``SO_ERROR``); True if there was one."""
        try:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:  # pragma: no cover
            code = e.errno or 5  # EIO
        if not code:
            return False
        self._engine.translate(OSError(code, os.strerror(code)))
        self._sync_unusable()
        return True

    def _wait(
        self, ready: Callable[[], bool], timeout: float | None, *, what: str,
        tolerate_failure: bool = False,
    ) -> None:
        """Reap completions until ``ready()``, sleeping in poll(2) on POLLERR."""
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        engine = self._engine
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = 0
        woke = False
        while True:
            messages = self._reap_messages()
            if ready():
                return
            failure = engine.connection_failure
            if failure is not None and not tolerate_failure:
                raise failure
            if woke and not messages:
                # POLLERR/POLLHUP without queued completions: a socket error, or a hung-up socket
                if self._check_socket_error():
                    continue
                idle += 1
            else:
                idle = 0
            ms = -1
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutExpired(
                        f"{what}: {self._tracker.pending_tokens} ticket(s) still pending "
                        f"after {timeout} s"
                    )
                ms = max(1, math.ceil(remaining * 1000))
            if self._ring is not None:  # notifications wake the ring, errors come as results
                self._ring.wait(None if ms < 0 else ms / 1000)
                continue
            if idle:
                # poll(2) keeps reporting the hang-up: back off instead of spinning
                time.sleep(min(0.0005 * (1 << min(idle, 7)), 0.05, ms / 1000 if ms > 0 else 1))
                woke = True
                continue
            woke = bool(self._poller.poll(ms))


def _core_flag(name: str) -> property:
    """``Sender._active``/``_unusable`` kept in the compiled core, where its send reads them."""
    get = operator.attrgetter(f"_core.{name}")

    def set_flag(self: Sender, value: bool) -> None:
        setattr(self._core, name, value)

    return property(get, set_flag)


if _COMPILED:
    setattr(Sender, "_active", _core_flag("active"))  # noqa: B010
    setattr(Sender, "_unusable", _core_flag("unusable"))  # noqa: B010
