"""The io_uring send engine under an event loop: ``SEND_ZC`` that never blocks the loop.

Theory of operation (docs/ARCHITECTURE.md, 'Transmit: the io_uring engine'). The blocking
:class:`zcnet.sender.Sender` waits for a send's result inside ``io_uring_enter``; a loop cannot.
Here a send is submitted without waiting (``Ring.start_send``) and the loop is woken by an
eventfd registered with the ring (``IORING_REGISTER_EVENTFD``: the kernel signals it whenever it
posts a completion), which the loop watches with ``add_reader`` like any file descriptor, on
asyncio and uvloop alike. Each wake-up reads the eventfd, wakes the send waiting for its result
and hands the notifications to ``on_completions``. A stream's send asks the kernel for all of its
bytes (``MSG_WAITALL``: the kernel retries it as room frees, io_uring/net.c ``io_net_retry``), so
the loop is never asked to wait for writability. A send cancelled while the kernel still holds
it is cancelled in the ring (``IORING_OP_ASYNC_CANCEL``) and its result read: what it took is
then known exactly (:attr:`RingSends.took`), for the engine's record of the byte stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from zcnet._core.tracker import ZerocopyCompletion
from zcnet.errors import SocketClosedError
from zcnet.lowlevel.uring import SlabRegistry
from zcnet.pool import Lease

__all__ = ["RingSends"]


class RingSends:
    """One stream's io_uring ring on an event loop.

    Args:
        ring: a ``zcnet._speedups.Ring`` (``zcnet.lowlevel.uring.open_engine_ring``); closed by
            :meth:`close`, also when this constructor fails.
        fd: the connected stream socket (the caller keeps owning it).
        loop: the loop that watches the ring's eventfd.
        on_completions: called on the loop after every wake-up (reap the notifications there
            with :meth:`completions`).
    """

    def __init__(self, ring: Any, fd: int, loop: asyncio.AbstractEventLoop,
                 on_completions: Callable[[], object]) -> None:
        self._ring: Any = ring
        self._fd = fd
        self._loop = loop
        self._on_completions = on_completions
        self._ready = asyncio.Event()
        self._efd = -1
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._ring.register_eventfd(self._efd)
            loop.add_reader(self._efd, self._on_eventfd)
        except BaseException:
            self._close_fds()
            raise
        self.slabs = SlabRegistry(self._ring)
        #: What the last send ended by an exception took (bytes), or ``None`` if unknown.
        self.took: int | None = None
        self._pending: int | None = None  # the send waiting for its result
        self.wakeups = 0  # times the loop called us back (for tests: no spinning)

    @property
    def sends_registered(self) -> int:
        """Sends from a registered pool slab that took bytes."""
        return int(self._ring.sends_registered)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._efd < 0

    def fixed_index(self, lease: Lease | None) -> int:
        """The registered-buffer index of ``lease``'s slab (registering it now), or -1."""
        return -1 if lease is None else self.slabs.index_of(lease._block.slab)

    async def send(self, piece: memoryview, fixed: int) -> int:
        """Hand all of ``piece`` to the kernel as one ``SEND_ZC`` (``fixed``: its registered
        buffer; -1: the registered buffer that holds it, if any); returns the bytes it took,
        fewer only if an error stopped it.

        The caller keeps ``piece``'s memory unchanged until the send's notification. If the
        wait is interrupted (cancelled), the send is cancelled in the ring, :attr:`took` is set
        to what it took, and the exception propagates.

        Raises:
            OSError: the kernel refused the send (nothing taken).
        """
        ring = self._ring
        if self.closed:
            raise SocketClosedError("the stream is closed")
        self.took = None
        self._pending = seq = ring.start_send(self._fd, piece, fixed, True)
        try:
            while True:
                self._ready.clear()
                try:
                    n = ring.result(seq)
                except OSError:
                    self._pending = None
                    raise
                if n is not None:
                    self._pending = None
                    return int(n)
                await self._ready.wait()
                if self.closed:  # close() cancelled the send and read what it took
                    raise SocketClosedError("the stream was closed while a send was in the "
                                            "kernel")
        except BaseException:
            if self._pending is not None:
                self._pending = None
                if not self.closed:
                    with contextlib.suppress(OSError):  # OSError: unknown, took stays None
                        self.took = int(ring.cancel(seq))
            raise

    def completions(self) -> list[ZerocopyCompletion]:
        """The notifications read so far, as the error queue would give them."""
        if self.closed:
            return []
        return [ZerocopyCompletion(lo, hi, copied)
                for lo, hi, copied in self._ring.completions()]

    def _on_eventfd(self) -> None:
        self.wakeups += 1
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        self._ready.set()
        self._on_completions()

    def _close_fds(self) -> None:
        if self._efd >= 0:
            with contextlib.suppress(ValueError, RuntimeError):  # loop closed meanwhile
                self._loop.remove_reader(self._efd)
            os.close(self._efd)
            self._efd = -1
        self._ring.close()

    def close(self) -> None:
        """Stop watching and close the ring (idempotent). A send still in the kernel is
        cancelled first (its :meth:`send` raises :class:`SocketClosedError`, :attr:`took` says
        what it took). Notifications still due never arrive; the kernel keeps the pages of
        sends it still holds until it is done with them."""
        if self.closed:
            return
        if self._pending is not None:
            with contextlib.suppress(OSError):
                self.took = int(self._ring.cancel(self._pending))
        self._ready.set()
        self._close_fds()
