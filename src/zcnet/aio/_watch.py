"""Socket readiness for asyncio and uvloop through a private, nested, edge-triggered epoll.

Theory of operation. A socket with zero-copy completions waiting on its error queue reports
``EPOLLERR`` until the queue is drained (``tcp_poll`` in net/ipv4/tcp.c: ``sk_err`` *or* a
non-empty ``sk_error_queue``; Documentation/networking/msg_zerocopy.rst). ``EPOLLERR`` cannot be
masked out of an epoll interest set. Registered directly with an event loop this goes wrong twice:
asyncio's level-triggered selector reports the fd readable and writable on every iteration (a busy
loop for as long as completions pend), and libuv (uvloop) stops and closes its poll watcher on
``POLLERR``.

So the socket is never given to the loop. It is registered, once, in an epoll instance of its own
(:func:`select.epoll`) with ``EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET``, and only that epoll fd
is given to the loop with ``loop.add_reader``. An epoll fd is itself pollable: it is readable while
its ready list is non-empty (``ep_eventpoll_poll`` in fs/eventpoll.c). With ``EPOLLET`` an item
joins the ready list only when the socket's wait queue is woken (data arrived, send space freed,
an error-queue entry or a state change was queued) and leaves it when we collect it, so the epoll fd
turns readable once per kernel event, never continuously: pending completions cost nothing while
nobody reads them.

Edge triggering means readiness must be remembered, as in mio/tokio: :class:`SocketWatcher` keeps
a readiness cache (initially "readable and writable"), sets bits from the events it collects, and
the caller clears a bit when the operation it tried returns ``EAGAIN``. Bits are only ever set by
collecting an event, after the failed attempt, so no wake-up can be lost between the attempt and
the wait. ``EPOLLERR`` goes to an ``on_error`` callback (the completion reaper) and wakes
readers/writers only when the callback says the error is not merely completions.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable
from typing import Final

from zcnet.errors import SocketClosedError

__all__ = ["READABLE", "WRITABLE", "SocketWatcher"]

READABLE: Final = 1
WRITABLE: Final = 2

_REGISTER: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_IN_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLPRI
_OUT_EVENTS: Final = select.EPOLLOUT | select.EPOLLHUP


class SocketWatcher:
    """Readiness of one socket fd on an asyncio (or uvloop) loop, safe with error-queue traffic.

    Args:
        fd: the socket's file descriptor (the caller keeps owning it; close the watcher first).
        loop: the running loop; defaults to :func:`asyncio.get_running_loop`.
        on_error: called (synchronously, on the loop) each time the kernel reports ``EPOLLERR``.
            It should drain the error queue and return ``True`` if the socket has a real error
            (``SO_ERROR``), so that waiting readers and writers wake up and see it. Without a
            callback every ``EPOLLERR`` wakes readers and writers.

    Use: try the non-blocking operation; on ``BlockingIOError`` call :meth:`clear` with the
    direction, then ``await`` :meth:`wait` for it, and try again.
    """

    def __init__(
        self,
        fd: int,
        loop: asyncio.AbstractEventLoop | None = None,
        on_error: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._fd = fd
        self._on_error = on_error
        self._ready = READABLE | WRITABLE
        self._waiters: dict[int, list[asyncio.Future[None]]] = {READABLE: [], WRITABLE: []}
        self._closed = False
        self.wakeups = 0  # times the loop called us back (for tests: proves there is no spin)
        self.error_events = 0
        self._ep = select.epoll(1)
        try:
            self._ep.register(fd, _REGISTER)
            self._loop.add_reader(self._ep.fileno(), self._on_epoll_ready)
        except BaseException:
            self._ep.close()
            raise

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def is_ready(self, direction: int) -> bool:
        """Whether the cache says ``direction`` (READABLE or WRITABLE) may not block."""
        return bool(self._ready & direction)

    def clear(self, direction: int) -> None:
        """Forget readiness after an operation in ``direction`` returned ``EAGAIN``."""
        self._ready &= ~direction

    def set_error_handler(self, on_error: Callable[[], bool] | None) -> None:
        """Replace the ``EPOLLERR`` callback (see the class docstring)."""
        self._on_error = on_error

    async def wait(self, direction: int) -> None:
        """Return once ``direction`` is (believed) ready; at once if the cache already says so.

        Raises:
            SocketClosedError: the watcher is closed, before or during the wait.
        """
        if direction not in (READABLE, WRITABLE):
            raise ValueError(f"direction must be READABLE or WRITABLE, got {direction!r}")
        if self._closed:
            raise SocketClosedError("socket watcher is closed")
        if self._ready & direction:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        waiters = self._waiters[direction]
        waiters.append(fut)
        try:
            await fut
        finally:
            if fut in waiters:
                waiters.remove(fut)

    def poke(self, direction: int = READABLE | WRITABLE) -> None:
        """Mark ``direction`` ready and wake its waiters (e.g. after a real socket error)."""
        self._set_ready(direction)

    def _set_ready(self, direction: int) -> None:
        self._ready |= direction
        for d in (READABLE, WRITABLE):
            if direction & d:
                for fut in self._waiters[d]:
                    if not fut.done():
                        fut.set_result(None)

    def _on_epoll_ready(self) -> None:
        self.wakeups += 1
        if self._closed:
            return
        try:
            events = self._ep.poll(0, 8)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            return
        mask = 0
        for _, ev in events:
            mask |= ev
        ready = 0
        if mask & _IN_EVENTS:
            ready |= READABLE
        if mask & _OUT_EVENTS:
            ready |= WRITABLE
        if mask & select.EPOLLERR:
            self.error_events += 1
            real_error = True
            if self._on_error is not None:
                try:
                    real_error = self._on_error()
                except Exception as e:  # wake everyone: their next operation reports the error
                    self._loop.call_exception_handler({
                        "message": "zcnet.aio.SocketWatcher on_error callback failed",
                        "exception": e,
                    })
            if real_error:
                ready |= READABLE | WRITABLE
        if ready:
            self._set_ready(ready)

    def close(self) -> None:
        """Stop watching: unregister from the loop, close the private epoll, fail waiters.

        Idempotent. The socket itself is not closed.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError, ValueError):  # the loop is already closed
            self._loop.remove_reader(self._ep.fileno())
        self._ep.close()
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(SocketClosedError("socket watcher closed while waiting"))
            waiters.clear()
