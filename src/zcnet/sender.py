"""Blocking zero-copy sender: ``MSG_ZEROCOPY`` sends with safe buffer lifetimes.

Theory of operation (Documentation/networking/msg_zerocopy.rst; docs/ARCHITECTURE.md, 'Transmit'):

* :class:`Sender` enables ``SO_ZEROCOPY`` on a connected TCP or UDP socket (if the kernel refuses,
  it works in copy mode and says why in ``stats.fallback_reason``) and sends each buffer with
  ``send(..., MSG_ZEROCOPY)``, sendall-style for TCP (a large buffer is sent in pieces, and partial
  sends continue where they stopped), one datagram per call for UDP (with ``UDP_SEGMENT`` set by
  the caller, a GSO super-datagram of up to 64 KB).
* The kernel pins the pages instead of copying them and tells, later, on the socket error queue,
  which send calls it no longer references. Each successful zero-copy call consumes one value of
  the socket's u32 counter; :class:`zcnet._core.tracker.CompletionTracker` mirrors it and maps
  values to :class:`Ticket` s. Until its ticket is done the sender keeps a ``memoryview`` of the
  buffer (a ``bytearray`` cannot be resized meanwhile); writing into the buffer before then
  changes the bytes that go on the wire.
* :meth:`Sender.send_batch` sends many UDP datagrams per system call with ``sendmmsg(2)``
  (net/socket.c ``__sys_sendmmsg``; :mod:`zcnet.lowlevel.sendmmsg`): each message sent is a full
  ``udp_sendmsg`` and takes one counter value, so a call that sent ``k`` zero-copy datagrams is
  recorded as ``k`` single-call tickets (``CompletionTracker.record_batch``). The call stops at
  the first message that fails and returns the count sent; the batch resumes there, so the
  failed datagram's own error comes from the next call (``ENOBUFS``: reap and retry, or copy;
  anything else fails that datagram's ticket only). Buffer addresses are read without copying
  (:mod:`zcnet.lowlevel.bufaddr`) into preallocated ``mmsghdr``/``iovec`` arrays; the sender keeps
  a ``memoryview`` of every buffer until its ticket is done, exactly as for :meth:`Sender.send`.
* Completions are read opportunistically (every few zero-copy calls), in :meth:`Sender.poll`, and
  while waiting (:meth:`Ticket.wait`, :meth:`Sender.flush`), which sleeps in ``poll(2)``: a pending
  completion raises ``POLLERR`` on the socket, so there is no busy loop.
* :class:`zcnet._core.txpolicy.TxController` decides: small sends copy; once the kernel reports
  copied completions (loopback, veth) the socket switches to plain copying sends; ``ENOBUFS`` (the
  ``optmem_max`` notification budget or ``RLIMIT_MEMLOCK``) is absorbed by reaping and retrying,
  then a copying send.
* A broken TCP connection (peer reset, or any other send error) fails every pending ticket
  (``wait()`` raises, e.g. :class:`ConnectionResetByPeer`) instead of leaving it pending forever;
  a ticket still becomes ``done`` if the kernel reports its completion later. On UDP a failed
  datagram (``SendError``) does not end the Sender. ``close()`` drains
  completions (up to ``drain_timeout``) before closing the socket, because notifications not read
  before ``close`` are lost; tickets still pending then stay not-done forever (their buffers stay
  exported, never handed back while the kernel might read them).

Not thread-safe: use one Sender from one thread at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import select
import socket
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from zcnet._core.tracker import CompletionTracker
from zcnet._core.txpolicy import EnobufsAction, SenderStats, SendPolicy, TxController
from zcnet.errors import (
    ConnectionResetByPeer,
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
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ZEROCOPY,
    SO_ZEROCOPY,
    SOL_IP,
    SOL_IPV6,
)
from zcnet.lowlevel.errqueue import QueuedError, ZerocopyCompletion, drain_errqueue
from zcnet.lowlevel.sendmmsg import MmsgBatch, sendmmsg_available

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12
else:
    Buffer = Any

__all__ = ["SendPolicy", "Sender", "SenderStats", "Ticket"]

_log = logging.getLogger(__name__)

#: Largest piece of a TCP buffer sent by one zero-copy call: keeps the pinned (RLIMIT_MEMLOCK
#: charged) amount per call moderate; every call costs one counter value, completions coalesce.
ZC_CHUNK: Final = 1 << 20
#: Read the error queue once this many "reap units" were sent with zero-copy: one unit per call
#: plus one per 128 KiB (64 KiB datagrams: every 64 calls; 1 MiB pieces: every 7 calls). The
#: kernel coalesces completions meanwhile, and a copied-completion fallback is noticed early.
REAP_EVERY: Final = 64
_REAP_SHIFT: Final = 17
_RESET_ERRNOS: Final = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN}
)
_POLL_MASK: Final = select.POLLERR
_new = object.__new__
#: Datagrams per sendmmsg(2) call of :meth:`Sender.send_batch` (the preallocated array size).
BATCH_MAX: Final = 64
#: Copying-send attempts of one datagram that keeps failing with ENOBUFS (a full device queue).
_PLAIN_ENOBUFS_ATTEMPTS: Final = 64
_RETRY_ERRNOS: Final = frozenset({errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
_BATCH_UNAVAILABLE: Final = sendmmsg_available()
_addressof = ctypes.addressof
_from_buffer = ctypes.c_char.from_buffer


def translate_send_error(e: OSError) -> ZcnetError:
    """Map a kernel error of a send to zcnet's hierarchy (the OSError becomes ``__cause__``).

    Shared by the blocking :class:`Sender` and :class:`zcnet.aio.ZcStream`.
    """
    if e.errno in _RESET_ERRNOS:
        err: ZcnetError = ConnectionResetByPeer(f"connection lost during send: {e}")
    elif e.errno == errno.EBADF:
        err = SocketClosedError(f"socket closed underneath the sender: {e}")
    else:
        err = SendError(f"send failed: {e}")
    err.__cause__ = e
    return err


def _recverr_enabled(sock: socket.socket) -> bool:
    """Whether ``IP_RECVERR`` (or ``IPV6_RECVERR``) is set on ``sock``."""
    level, name = ((SOL_IPV6, IPV6_RECVERR) if sock.family == socket.AF_INET6
                   else (SOL_IP, IP_RECVERR))
    try:
        return bool(sock.getsockopt(level, name))
    except OSError:
        return False


class Ticket:
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

    # Class-level defaults keep creation cheap (one attribute set for a plain send's ticket).
    done: bool = False
    zerocopy: bool = False
    copied: bool | None = None
    error: ZcnetError | None = None
    _sender: Sender | None = None
    _view: memoryview | None = None
    _callbacks: list[Callable[[Ticket], None]] | None = None

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        if self.error is not None:
            state += f", error={type(self.error).__name__}"
        return (
            f"<Ticket {self.nbytes} bytes {state} zerocopy={self.zerocopy} copied={self.copied}>"
        )

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
        sender._wait(lambda: self.done or self.error is not None, timeout, what="ticket")
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
        except Exception:
            _log.exception("Ticket done callback %r failed", fn)

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


class _PlainTicket(Ticket):
    """The ticket of a plain (copying) send: done at once."""

    done = True


class _BatchTicket(Ticket):
    """The ticket of a zero-copy datagram sent by :meth:`Sender.send_batch`."""

    zerocopy = True


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
        UnsupportedSocketError: not an IPv4/IPv6 TCP or UDP socket, or not connected.
        SocketClosedError: the socket is already closed.
    """

    def __init__(self, sock: socket.socket, policy: SendPolicy | None = None) -> None:
        if not isinstance(sock, socket.socket):
            raise UnsupportedSocketError(f"expected a socket.socket, got {type(sock).__name__}")
        if sock.fileno() < 0:
            raise SocketClosedError("the socket is closed")
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
        self._ctl = TxController(self.policy)
        self._tracker: CompletionTracker[Ticket] = CompletionTracker()
        self._sock = sock
        self._fd = sock.fileno()
        self._closed = False
        self._failure: ZcnetError | None = None
        self._unusable = False  # closed or failed: checked once per send
        self._since_reap = 0
        # largest buffer sent by the one-call fast path (a UDP datagram is always one call)
        self._single_max = ZC_CHUNK if self._stream else sys.maxsize
        sock.setblocking(True)
        self._send = sock.send
        # plain sends: sendall for TCP; one send() is one whole datagram (or an error) for UDP
        self._sendall = sock.sendall if self._stream else sock.send
        if not sys.platform.startswith("linux"):
            self._ctl.disable(f"MSG_ZEROCOPY needs Linux (platform is {sys.platform})")
        elif not self._stream and _recverr_enabled(sock):
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
        return self._ctl.stats()

    @property
    def pending(self) -> int:
        """Tickets not yet done."""
        return self._tracker.pending_tokens

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    def send(self, buf: Buffer) -> Ticket:
        """Send all of ``buf`` (one datagram on UDP) and return its :class:`Ticket`.

        ``buf`` must be a C-contiguous buffer (``bytes``, ``bytearray``, ``memoryview``, ``mmap``,
        ``array``, a NumPy array...); it is sent as its raw bytes. Returns when every byte was
        handed to the kernel; with zero-copy the buffer must not be modified until
        ``ticket.done`` (modifying it changes what is sent).

        Raises:
            InvalidBufferError: not a buffer, or not contiguous.
            SocketClosedError: the Sender was closed.
            ConnectionResetByPeer: the peer reset the connection (pending tickets fail too).
            SendError: any other send failure (the OSError is the ``__cause__``).
        """
        if self._unusable:
            self._raise_unusable()
        tb = type(buf)
        if tb is bytes or tb is bytearray:
            nbytes = len(buf)  # type: ignore[arg-type]
            mv = None
        elif tb is memoryview:
            try:
                if not buf.c_contiguous:  # type: ignore[attr-defined]
                    raise InvalidBufferError("the memoryview is not C-contiguous")
                nbytes = buf.nbytes  # type: ignore[attr-defined]
            except ValueError as e:  # released
                raise InvalidBufferError(f"unusable memoryview: {e}") from e
            mv = None
        else:
            mv = self._view_of(buf)
            nbytes = mv.nbytes
        ctl = self._ctl
        if ctl.zerocopy and nbytes >= ctl.threshold and nbytes:
            if mv is None:
                mv = memoryview(buf)  # our own export, held until the ticket is done
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            ticket = _new(Ticket)  # Ticket(nbytes) without the __init__ frame
            ticket.nbytes = nbytes
            ticket.zerocopy = True
            ticket._sender = self
            ticket._view = mv
            if nbytes > self._single_max:
                return self._send_zerocopy(ticket, mv, nbytes, 0, None)
            # fast path: the whole buffer in one call
            try:
                sent = self._send(mv, MSG_ZEROCOPY)
            except OSError as e:
                return self._send_zerocopy(ticket, mv, nbytes, 0, e)
            if sent != nbytes:  # partial TCP send: continue in the general path
                self._tracker.record_send(ticket, sent)
                ctl.on_zerocopy_sent(sent)
                return self._send_zerocopy(ticket, mv, nbytes, sent, None)
            self._tracker.record_single(ticket, nbytes)
            ctl.sends_zerocopy += 1  # ctl.on_zerocopy_sent(nbytes), inlined
            ctl.bytes_pending += nbytes
            if ctl.enobufs_round or ctl.enobufs_copies:
                ctl.enobufs_round = ctl.enobufs_copies = 0
            n = self._since_reap + 1 + (nbytes >> _REAP_SHIFT)
            self._since_reap = n
            if n >= REAP_EVERY:
                self._reap()
            return ticket
        try:
            self._sendall(buf)
        except OSError as e:
            if e.errno != errno.ENOBUFS or self._stream:
                raise self._failed(e) from e
            try:  # a full device queue (UDP with IP_RECVERR): back-pressure, retry
                self._send_plain(mv if mv is not None else memoryview(buf))
            except OSError as e2:
                raise self._failed(e2) from e2
        ctl.sends_plain += 1
        ctl.bytes_plain += nbytes
        ticket = _new(_PlainTicket)
        ticket.nbytes = nbytes
        return ticket

    def send_batch(self, bufs: Sequence[Buffer]) -> list[Ticket]:
        """Send each buffer of ``bufs`` as :meth:`send` would; one :class:`Ticket` per buffer.

        On UDP each buffer is one datagram (with ``UDP_SEGMENT``, a GSO super-datagram) and the
        datagrams go out in order, up to :data:`BATCH_MAX` per ``sendmmsg(2)`` system call
        (zero-copy ones with ``MSG_ZEROCOPY``, the others in copying calls), so Python's fixed
        cost per system call is paid once per batch instead of once per datagram. On TCP (or
        where ``sendmmsg`` is missing) it loops over :meth:`send`.

        Every buffer is checked before anything is sent. A datagram the kernel refuses (e.g.
        ``EMSGSIZE``, or an ICMP error reported by that call) does not stop the batch: its ticket
        is done with :attr:`Ticket.error` set (a :class:`SendError`, the ``OSError`` as its
        cause; :meth:`Ticket.wait` raises it) and the datagrams after it are still sent.
        ``ENOBUFS`` is absorbed as in :meth:`send`; nothing is dropped silently.

        Raises:
            InvalidBufferError: an element is not a C-contiguous buffer (nothing was sent).
            SocketClosedError: the Sender (or its socket) was closed.
            ConnectionResetByPeer, SendError: TCP only, as :meth:`send`.
        """
        if self._unusable:
            self._raise_unusable()
        views: list[memoryview] = []
        if self._stream or _BATCH_UNAVAILABLE is not None:
            try:
                for buf in bufs:
                    views.append(self._view_of(buf))
            except InvalidBufferError:
                for mv in views:
                    mv.release()
                raise
            return [self.send(mv) for mv in views]
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
                mv = memoryview(buf)
                add_view(mv)
                nb = mv.nbytes
                add_size(nb)
                add_addr(readonly(mv) if mv.readonly or not nb else _addressof(_from_buffer(mv)))
                t: Ticket
                if zerocopy and nb >= threshold and nb:
                    t = _new(_BatchTicket)
                    t.nbytes = nb
                    t._sender = self
                    t._view = mv
                else:
                    plain += 1
                    t = _new(_PlainTicket)
                    t.nbytes = nb
                add_ticket(t)
        except (TypeError, ValueError, BufferError) as e:
            for mv in views:
                mv.release()
            raise InvalidBufferError(
                f"expected C-contiguous bytes-like buffers, got {type(buf).__name__}: {e}"
            ) from e
        n = len(views)
        i = 0
        while i < n:
            j = min(n, i + BATCH_MAX)
            zc = tickets[i].zerocopy
            if plain:  # a run of datagrams of the same kind
                k = i + 1
                while k < j and tickets[k].zerocopy is zc:
                    k += 1
                j = k
            i = self._batch_run(tickets, views, sizes, addrs, i, j, zc and ctl.zerocopy)
        return tickets

    def _batch_run(
        self, tickets: list[Ticket], views: list[memoryview], sizes: list[int], addrs: list[int],
        i: int, j: int, zc: bool,
    ) -> int:
        """sendmmsg datagrams ``i .. j-1``, all zero-copy or all plain; returns where it stopped
        (``j``, or earlier if the socket switched to copy mode meanwhile)."""
        batch = self._mmsg
        if batch is None:
            batch = self._mmsg = MmsgBatch(BATCH_MAX)
        m = 2 * (j - i)
        words = batch.words
        words[0:m:2] = array("Q", addrs[i:j])
        words[1:m:2] = array("Q", sizes[i:j])
        fd = self._fd
        ctl = self._ctl
        flags = MSG_ZEROCOPY if zc else 0
        off = i
        attempts = 0
        while off < j:
            try:
                sent = batch.send(fd, off - i, j - off, flags)
            except OSError as e:
                if self._batch_error(e, tickets[off], views[off], zc, attempts):
                    attempts += 1
                    continue
                attempts = 0
                off += 1
                if zc and not ctl.zerocopy:
                    return off
                continue
            attempts = 0
            stop = off + sent
            done_sizes = sizes[off:stop]
            if zc:
                self._tracker.record_batch(tickets[off:stop], done_sizes)
                ctl.on_zerocopy_batch(sent, sum(done_sizes))
                off = stop
                self._since_reap += sent
                if self._since_reap >= REAP_EVERY:
                    self._reap()
                    if not ctl.zerocopy:
                        return off
            else:
                for k in range(off, stop):
                    t = tickets[k]
                    if t.zerocopy:  # meant for zero-copy, sent after the switch to copy mode
                        _as_plain(t)
                    views[k].release()
                ctl.on_plain_sent(sum(done_sizes), sent)
                off = stop
        return off

    def _batch_error(
        self, e: OSError, ticket: Ticket, view: memoryview, zc: bool, attempts: int
    ) -> bool:
        """Handle the failure of one datagram of a batch: True to retry it, False when it was
        dealt with (sent by a copy, or its ticket failed)."""
        code = e.errno
        ctl = self._ctl
        if code == errno.EINTR:
            return True
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):  # SO_SNDTIMEO on the socket
            self._wait_writable()
            return True
        if code == errno.ENOBUFS:
            if zc:
                if ctl.on_enobufs(self._tracker.outstanding) is EnobufsAction.REAP_AND_RETRY:
                    self._reap_wait(ctl.enobufs_wait())
                    return True
                error: OSError | None = None
                try:
                    self._send_plain(view)
                except OSError as e2:
                    error = e2
                if error is None:
                    ctl.on_plain_sent(ticket.nbytes)
                    _as_plain(ticket)
                    view.release()
                    return False
                e = error
            elif attempts < _PLAIN_ENOBUFS_ATTEMPTS:  # a full device queue: back-pressure
                self._reap_wait(min(0.001 * (attempts + 1), 0.05))
                return True
        err = self._failed(e)
        if isinstance(err, SocketClosedError):
            raise err from e
        _as_plain(ticket)
        ticket.error = err
        view.release()
        return False

    def poll(self) -> int:
        """Read pending completions without blocking; returns the number of tickets completed."""
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        return self._reap()[1]

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
        self._wait(lambda: not tracker.pending_tokens, timeout, what="flush")
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        """Drain completions (at most ``policy.drain_timeout`` seconds), then close the socket.

        Tickets still pending afterwards never become done (the kernel may still read their
        buffers) and get a :class:`SocketClosedError` as :attr:`Ticket.error`. Idempotent.
        """
        if self._closed:
            return
        tracker = self._tracker
        try:
            if tracker.pending_tokens:
                self._wait(
                    lambda: not tracker.pending_tokens, self.policy.drain_timeout,
                    what="close", tolerate_failure=True,
                )
        except ZcnetError as e:
            _log.warning("Sender.close: %s", e)
        finally:
            left = 0
            for ticket in tracker.tokens():
                left += 1
                if ticket.error is None:
                    ticket.error = SocketClosedError(
                        "the Sender was closed before the kernel released this buffer"
                    )
            if left:
                _log.warning("Sender.close: %d ticket(s) never completed", left)
            self._closed = True
            self._unusable = True
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._poller.unregister(self._fd)
            self._sock.close()

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _view_of(buf: Buffer) -> memoryview:
        try:
            mv = memoryview(buf)
        except TypeError as e:
            raise InvalidBufferError(
                f"expected a bytes-like buffer, got {type(buf).__name__}"
            ) from e
        if not mv.c_contiguous:
            mv.release()
            raise InvalidBufferError(f"the {type(buf).__name__} buffer is not C-contiguous")
        return mv

    def _raise_unusable(self) -> None:
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        if self._failure is not None:
            raise self._failure

    def _failed(self, e: OSError) -> ZcnetError:
        """Translate ``e``; a connection failure fails every pending ticket.

        On TCP every send error means the connection is gone (``ECONNRESET``, ``ETIMEDOUT``,
        ...); on UDP only a closed socket is final (an ICMP error fails one send).
        """
        err = translate_send_error(e)
        if self._stream or isinstance(err, SocketClosedError):
            self._fail_pending(err)
        return err

    def _fail_pending(self, err: ZcnetError) -> None:
        if self._failure is None:
            self._failure = err
            self._unusable = True
        for ticket in self._tracker.tokens():
            if ticket.error is None:
                ticket.error = err

    def _send_zerocopy(
        self, ticket: Ticket, mv: memoryview, nbytes: int, off: int, error: OSError | None
    ) -> Ticket:
        """The general zero-copy path: pieces, partial sends, ENOBUFS, a mode switch midway.

        ``off`` bytes were already sent (and recorded); ``error`` is the failure of the call
        that was just attempted for the piece at ``off``, if any.
        """
        ctl = self._ctl
        tracker = self._tracker
        send = self._send
        chunk = ZC_CHUNK if self._stream else nbytes
        used_zc = off > 0
        try:
            while off < nbytes:
                end = min(off + chunk, nbytes)
                piece = mv if (off == 0 and end == nbytes) else mv[off:end]
                if error is None:
                    if not ctl.zerocopy:  # switched to copy mode meanwhile: copy the rest
                        self._send_plain(mv[off:] if off else mv)
                        ctl.on_plain_sent(nbytes - off)
                        break
                    try:
                        sent = send(piece, MSG_ZEROCOPY)
                    except OSError as exc:
                        error = exc
                if error is not None:
                    failed, error = error, None
                    if failed.errno == errno.ENOBUFS:
                        if ctl.on_enobufs(tracker.outstanding) is EnobufsAction.REAP_AND_RETRY:
                            self._reap_wait(ctl.enobufs_wait())
                        else:
                            self._send_plain(piece)
                            ctl.on_plain_sent(end - off)
                            off = end
                        continue
                    if failed.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # SO_SNDTIMEO set
                        self._wait_writable()
                        continue
                    raise failed
                used_zc = True
                tracker.record_send(ticket, sent)
                ctl.on_zerocopy_sent(sent)
                off += sent
                self._since_reap += 1 + (sent >> _REAP_SHIFT)
                if self._since_reap >= REAP_EVERY:
                    self._reap()
        except OSError as e:
            tracker.seal(ticket)
            err = self._failed(e)
            ticket.error = err
            raise err from e
        except BaseException:
            tracker.seal(ticket)
            raise
        if not used_zc:
            ticket.zerocopy = False
        copied = tracker.seal(ticket)
        if copied is not None:
            ticket._finish(copied)
        return ticket

    def _send_plain(self, piece: memoryview) -> None:
        """A copying send of ``piece``; on UDP ``ENOBUFS`` (full device queue) is retried."""
        if self._stream:  # a partial sendall cannot be retried without duplicating bytes
            self._sendall(piece)
            return
        for attempt in range(64):
            try:
                self._sendall(piece)
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._reap_wait(min(0.001 * (attempt + 1), 0.05))
        self._sendall(piece)

    def _wait_writable(self) -> None:
        p = select.poll()
        p.register(self._fd, select.POLLOUT | select.POLLERR)
        p.poll(100)
        self._reap()

    def _reap_wait(self, seconds: float) -> None:
        """Reap completions; if there were none, wait up to ``seconds`` (POLLERR) and reap."""
        if not self._reap()[0]:
            self._poller.poll(max(1, math.ceil(seconds * 1000)))
            self._reap()

    def _reap(self) -> tuple[int, int]:
        """Read the error queue; returns (messages, tickets completed)."""
        self._since_reap = 0
        try:
            events = drain_errqueue(self._sock)
        except OSError as e:
            raise self._failed(e) from e
        if not events:
            return 0, 0
        tracker = self._tracker
        ctl = self._ctl
        finished = 0
        invalid: InvalidCompletionError | None = None
        for ev in events:
            if type(ev) is ZerocopyCompletion:
                try:
                    res = tracker.complete(ev.lo, ev.hi, ev.copied)
                except InvalidCompletionError as e:
                    invalid = invalid or e
                    continue
                ctl.on_completion(res.calls, res.nbytes, ev.copied)
                for ticket, copied in zip(res.done, res.done_copied, strict=True):
                    ticket._finish(copied)
                finished += len(res.done)
            else:
                assert isinstance(ev, QueuedError)
                ctl.on_other_error()
                _log.debug("non-zerocopy error-queue message: %r", ev)
        if invalid is not None:
            raise invalid
        return len(events), finished

    def _check_socket_error(self) -> bool:
        """Consume a pending socket error (``SO_ERROR``); True if there was one."""
        try:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:  # pragma: no cover
            code = e.errno or errno.EIO
        if not code:
            return False
        self._failed(OSError(code, f"{errno.errorcode.get(code, code)}: socket error"))
        return True

    def _wait(
        self, ready: Callable[[], bool], timeout: float | None, *, what: str,
        tolerate_failure: bool = False,
    ) -> None:
        """Reap completions until ``ready()``, sleeping in poll(2) on POLLERR."""
        if self._closed:
            raise SocketClosedError("the Sender is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = 0
        woke = False
        while True:
            messages, _ = self._reap()
            if ready():
                return
            if self._failure is not None and not tolerate_failure:
                raise self._failure
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
            if idle:
                # poll(2) keeps reporting the hang-up: back off instead of spinning
                time.sleep(min(0.0005 * (1 << min(idle, 7)), 0.05, ms / 1000 if ms > 0 else 1))
                woke = True
                continue
            woke = bool(self._poller.poll(ms))
