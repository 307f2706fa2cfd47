"""Connecting and serving zero-copy streams: ``open_connection`` and ``start_server``.

Theory of operation: the sockets never go to the event loop directly. A non-blocking
``connect`` completes when the socket turns writable (``connect(2)``: ``EINPROGRESS``, then
``SO_ERROR``), and a listener is readable when ``accept`` will not block; both are awaited through
a :class:`~zcnet.aio._watch.SocketWatcher` like the streams themselves, so the same code works on
asyncio and uvloop. ``mappable=True`` listens with ``TCP_MAXSEG`` 4108 (MSS 4096, one page per
segment; :func:`zcnet.receiver.make_mappable_listener`), which lets received pages be mapped over
loopback at the default MTU when the peer sends with ``MSG_ZEROCOPY`` (docs/ARCHITECTURE.md,
'Receive: loopback').
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from zcnet._core.txpolicy import SendPolicy
from zcnet.aio._stream import ZcStream
from zcnet.aio._watch import READABLE, WRITABLE, SocketWatcher
from zcnet.errors import SocketClosedError
from zcnet.receiver import RecvPolicy, make_mappable_listener

__all__ = ["Handler", "ZcServer", "open_connection", "start_server"]

_log = logging.getLogger(__name__)

Handler = Callable[[ZcStream], Awaitable[None]]


async def _connect(sock: socket.socket, addr: tuple[object, ...]) -> None:
    code = sock.connect_ex(addr)
    if code == 0:
        return
    if code not in (errno.EINPROGRESS, errno.EAGAIN):
        raise OSError(code, os.strerror(code))
    watch = SocketWatcher(sock.fileno())
    try:
        watch.clear(WRITABLE)
        await watch.wait(WRITABLE)
    finally:
        watch.close()
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


async def open_connection(
    host: str, port: int, *, family: int = socket.AF_UNSPEC,
    send_policy: SendPolicy | None = None, recv_policy: RecvPolicy | None = None,
) -> ZcStream:
    """Connect to ``host``:``port`` over TCP and return a :class:`ZcStream`.

    Each address ``getaddrinfo`` gives is tried in turn; use ``asyncio.timeout`` for a deadline.

    Raises:
        OSError: no address could be connected (the last error).
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for fam, typ, proto, _, addr in infos:
        sock = socket.socket(fam, typ, proto)
        try:
            sock.setblocking(False)
            await _connect(sock, addr)
            return ZcStream(sock, send_policy=send_policy, recv_policy=recv_policy)
        except OSError as e:
            sock.close()
            last = e
        except BaseException:
            sock.close()
            raise
    raise last if last is not None else OSError(f"getaddrinfo({host!r}, {port}) found nothing")


def _checked_shutdown_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"shutdown_timeout must be a number of seconds >= 0, not {value!r}")
    return float(value)


class ZcServer:
    """Listening sockets that hand each accepted connection, as a :class:`ZcStream`, to a handler.

    The stream is closed (completions drained) when the handler returns. Use as an async context
    manager, or call :meth:`close` and await :meth:`wait_closed`.

    Shutdown is bounded: :meth:`wait_closed` lets running handlers finish for up to
    ``shutdown_timeout`` seconds, then cancels those still running; each cancelled handler's stream
    then drains its completions for up to its ``SendPolicy.drain_timeout`` (see
    :meth:`ZcStream.close`). A handler that swallows the cancellation and keeps running past that
    has its stream aborted and is left behind with a warning, so :meth:`wait_closed` returns within
    ``shutdown_timeout + drain_timeout + 1`` seconds of :meth:`close` whatever the handlers do.
    """

    def __init__(self, listeners: Sequence[socket.socket], handler: Handler,
                 send_policy: SendPolicy | None, recv_policy: RecvPolicy | None,
                 shutdown_timeout: float = 5.0) -> None:
        self._shutdown_timeout = _checked_shutdown_timeout(shutdown_timeout)
        self._loop = asyncio.get_running_loop()
        self._listeners = list(listeners)
        self._handler = handler
        self._send_policy = send_policy
        self._recv_policy = recv_policy
        # running handler tasks and the stream each one serves (removed when the task ends)
        self._handlers: dict[asyncio.Task[None], ZcStream] = {}
        self._closed = asyncio.Event()
        self._shutdown: asyncio.Task[None] | None = None
        self._accepting = [self._loop.create_task(self._accept_loop(s)) for s in self._listeners]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._listeners)

    @property
    def port(self) -> int:
        """The port of the first listener (handy with ``port=0``)."""
        return int(self._listeners[0].getsockname()[1])

    @property
    def shutdown_timeout(self) -> float:
        """Seconds :meth:`wait_closed` lets running handlers finish before cancelling them."""
        return self._shutdown_timeout

    @property
    def active_handlers(self) -> int:
        """How many handlers are running now."""
        return len(self._handlers)

    def is_serving(self) -> bool:
        """Whether the server still accepts connections."""
        return not self._closed.is_set()

    async def _accept_loop(self, lsock: socket.socket) -> None:
        watch = SocketWatcher(lsock.fileno())
        try:
            while True:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    watch.clear(READABLE)
                    await watch.wait(READABLE)
                    continue
                except OSError as e:
                    if e.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                   errno.ENOMEM):
                        _log.warning("ZcServer accept: %s", e)
                        await asyncio.sleep(0.05 if e.errno != errno.ECONNABORTED else 0)
                        continue
                    raise
                try:
                    stream = ZcStream(conn, send_policy=self._send_policy,
                                      recv_policy=self._recv_policy)
                except Exception:
                    conn.close()
                    _log.exception("ZcServer: could not wrap an accepted connection")
                    continue
                task = self._loop.create_task(self._serve(stream))
                self._handlers[task] = stream
                task.add_done_callback(self._forget_handler)
        except SocketClosedError:
            pass
        finally:
            watch.close()

    def _forget_handler(self, task: asyncio.Task[None]) -> None:
        self._handlers.pop(task, None)

    async def _serve(self, stream: ZcStream) -> None:
        try:
            await self._handler(stream)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._loop.call_exception_handler({
                "message": "zcnet.aio server handler failed", "exception": e,
            })
        finally:
            await stream.aclose()

    def close(self) -> None:
        """Stop accepting and close the listeners; running handlers continue.

        Returns at once; :meth:`wait_closed` then ends the handlers within its bound.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        for task in self._accepting:
            task.cancel()
        for lsock in self._listeners:
            lsock.close()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` was called and every handler has ended, within a bound.

        Handlers get ``shutdown_timeout`` seconds to return by themselves; then those still
        running are cancelled and their streams close (draining completions for at most
        ``SendPolicy.drain_timeout``). Returns within ``shutdown_timeout + drain_timeout + 1``
        seconds of :meth:`close`. Cancelling this wait does not stop the shutdown.
        """
        await self._closed.wait()
        if self._shutdown is None:
            self._shutdown = self._loop.create_task(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        # The accept loops end at their next await (cancelled in close()), so no handler starts
        # after this. Waits use asyncio.wait on a snapshot of the tasks: it always yields to the
        # loop, unlike awaiting gather() of finished tasks, which returns at once since Python
        # 3.12 (gather completes eagerly) and so never lets their done callbacks run.
        await asyncio.wait(self._accepting)
        running = {t for t in self._handlers if not t.done()}
        if running:
            _, running = await asyncio.wait(running, timeout=self._shutdown_timeout)
        if running:
            _log.info("ZcServer: cancelling %d handler(s) still running after %s s",
                      len(running), self._shutdown_timeout)
            # a task leaves self._handlers only once done, so every running one is still there
            streams = {t: self._handlers[t] for t in running}
            for task in running:
                task.cancel()
            drain = max(s.send_policy.drain_timeout for s in streams.values())
            _, running = await asyncio.wait(running, timeout=drain + 1.0)
            for task in running:
                _log.warning("ZcServer: handler %r ignored its cancellation; its stream is "
                             "aborted and the handler is left running", task)
                streams[task].abort()

    async def __aenter__(self) -> ZcServer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()


def _listener(family: int, addr: tuple[object, ...], backlog: int, mappable: bool) -> socket.socket:
    if mappable:
        host, port = str(addr[0]), int(addr[1])  # type: ignore[call-overload]
        sock = make_mappable_listener(host, port, family=socket.AddressFamily(family),
                                      backlog=backlog)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


async def start_server(
    handler: Handler, host: str | None, port: int = 0, *, family: int = socket.AF_UNSPEC,
    backlog: int = 128, mappable: bool = False, send_policy: SendPolicy | None = None,
    recv_policy: RecvPolicy | None = None, shutdown_timeout: float = 5.0,
) -> ZcServer:
    """Listen on ``host``:``port`` and run ``await handler(stream)`` for each connection.

    ``host=None`` listens on every interface (as asyncio). ``mappable`` sets ``TCP_MAXSEG`` so
    received pages can be mapped over loopback (see the module docstring). ``shutdown_timeout``
    is how long :meth:`ZcServer.wait_closed` lets running handlers finish before cancelling them.

    Raises:
        ValueError: ``shutdown_timeout`` is negative.
        OSError: a listener could not be bound.
    """
    _checked_shutdown_timeout(shutdown_timeout)  # before binding anything
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for fam, _, _, _, addr in infos:
            if (fam, addr) in seen:
                continue
            seen.add((fam, addr))
            listeners.append(_listener(fam, addr, backlog, mappable))
    except BaseException:
        for s in listeners:
            with contextlib.suppress(OSError):
                s.close()
        raise
    return ZcServer(listeners, handler, send_policy, recv_policy, shutdown_timeout)
