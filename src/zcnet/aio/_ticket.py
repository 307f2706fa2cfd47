"""Awaitable send tickets: the asyncio face of one ``ZcStream.send`` call.

Theory of operation (Documentation/networking/msg_zerocopy.rst): a zero-copy send returns as soon
as the kernel has queued the bytes, but the kernel keeps reading the caller's pages until a
completion for every send call that carried them arrives on the error queue. An
:class:`AioTicket` is the token the shared :class:`zcnet._core.tracker.CompletionTracker` finishes;
until then it holds a ``memoryview`` export of the buffer (a ``bytearray`` cannot be resized under
the kernel). ``await ticket`` resolves when the buffer may be reused. It mirrors
:class:`zcnet.sender.Ticket` (same attributes, ``add_done_callback`` for pool leases), with
``wait()`` a coroutine: use ``asyncio.timeout`` for deadlines. Cancelling a task that awaits a
ticket does not affect the ticket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from typing import Any

from zcnet.errors import ZcnetError

__all__ = ["AioTicket"]

_log = logging.getLogger(__name__)


class AioTicket:
    """One send: tells when its buffer may be reused.

    Attributes:
        nbytes: bytes of the send.
        zerocopy: at least one ``MSG_ZEROCOPY`` send call carried part of it.
        done: the kernel no longer references the buffer; it may be reused or freed.
        copied: the kernel copied some of it after all (``None`` while pending or if never sent
            with ``MSG_ZEROCOPY``).
        error: set when the connection failed (or the stream closed) before the ticket was done;
            awaiting the ticket then raises it. ``done`` may still become true later.
    """

    __slots__ = ("_callbacks", "_loop", "_view", "_waiter", "copied", "done", "error", "nbytes",
                 "zerocopy")

    def __init__(self, loop: asyncio.AbstractEventLoop, nbytes: int, zerocopy: bool,
                 done: bool = False, copied: bool | None = None) -> None:
        self._loop = loop
        self._view: memoryview | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[AioTicket], None]] | None = None
        self.nbytes = nbytes
        self.zerocopy = zerocopy
        self.done = done
        self.copied = copied
        self.error: ZcnetError | None = None

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        if self.error is not None:
            state += f", error={type(self.error).__name__}"
        return (f"<AioTicket {self.nbytes} bytes {state} zerocopy={self.zerocopy} "
                f"copied={self.copied}>")

    def __await__(self) -> Generator[Any, None, None]:
        return self.wait().__await__()

    async def wait(self) -> None:
        """Return once :attr:`done`; raise :attr:`error` if the connection failed first.

        Raises:
            ConnectionResetByPeer, SendError, SocketClosedError: see :attr:`error`.
        """
        while True:
            if self.error is not None:
                raise self.error
            if self.done:
                return
            if self._waiter is None or self._waiter.done():
                self._waiter = self._loop.create_future()
            await asyncio.shield(self._waiter)

    def add_done_callback(self, fn: Callable[[AioTicket], None]) -> None:
        """Call ``fn(ticket)`` once the ticket is done (at once if it already is).

        Callbacks run on the event loop, where completions are reaped; exceptions are logged.
        """
        if self.done:
            self._run(fn)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def _run(self, fn: Callable[[AioTicket], None]) -> None:
        try:
            fn(self)
        except Exception:
            _log.exception("AioTicket done callback %r failed", fn)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, copied: bool) -> None:
        self.done = True
        self.copied = copied if self.zerocopy else None
        view, self._view = self._view, None
        if view is not None:
            view.release()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for fn in callbacks:
                self._run(fn)
        self._wake()

    def _fail(self, err: ZcnetError) -> None:
        if self.error is None:
            self.error = err
        self._wake()
