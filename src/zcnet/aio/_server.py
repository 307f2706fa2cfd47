"""Connecting and serving zero-copy streams: ``open_connection`` and ``start_server``.

Theory of operation: the sockets never go to the event loop directly. A non-blocking
``connect`` completes when the socket turns writable (``connect(2)``: ``EINPROGRESS``, then
``SO_ERROR``), and a listener is readable when ``accept`` will not block; both are awaited through
a :class:`~zcnet.aio._watch.SocketWatcher` like the streams themselves, so the same code works on
asyncio and uvloop. ``mappable=True`` listens with ``TCP_MAXSEG`` 4108 (MSS 4096, one page per
segment; :func:`zcnet.receiver.make_mappable_listener`), which lets received pages be mapped over
loopback at the default MTU when the peer sends with ``MSG_ZEROCOPY`` (shared/DESIGN.md).
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


class ZcServer:
    """Listening sockets that hand each accepted connection, as a :class:`ZcStream`, to a handler.

    The stream is closed (completions drained) when the handler returns. Use as an async context
    manager, or call :meth:`close` and await :meth:`wait_closed`.
    """

    def __init__(self, listeners: Sequence[socket.socket], handler: Handler,
                 send_policy: SendPolicy | None, recv_policy: RecvPolicy | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._listeners = list(listeners)
        self._handler = handler
        self._send_policy = send_policy
        self._recv_policy = recv_policy
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._accepting = [self._loop.create_task(self._accept_loop(s)) for s in self._listeners]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._listeners)

    @property
    def port(self) -> int:
        """The port of the first listener (handy with ``port=0``)."""
        return int(self._listeners[0].getsockname()[1])

    def is_serving(self) -> bool:
        """Whether the server still accepts connections."""
        return not self._closed

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
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        except SocketClosedError:
            pass
        finally:
            watch.close()

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
        """Stop accepting and close the listeners; running handlers continue."""
        if self._closed:
            return
        self._closed = True
        for task in self._accepting:
            task.cancel()
        for lsock in self._listeners:
            lsock.close()

    async def wait_closed(self) -> None:
        """Wait until the accept loops stopped and every handler returned."""
        await asyncio.gather(*self._accepting, return_exceptions=True)
        while self._handlers:
            await asyncio.gather(*list(self._handlers), return_exceptions=True)

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
    recv_policy: RecvPolicy | None = None,
) -> ZcServer:
    """Listen on ``host``:``port`` and run ``await handler(stream)`` for each connection.

    ``host=None`` listens on every interface (as asyncio). ``mappable`` sets ``TCP_MAXSEG`` so
    received pages can be mapped over loopback (see the module docstring).
    """
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
    return ZcServer(listeners, handler, send_policy, recv_policy)
