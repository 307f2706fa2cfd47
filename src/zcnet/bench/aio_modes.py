"""The benchmark's asyncio receive modes: zcnet.aio against asyncio's own stream APIs.

Theory of operation: each mode reads ``warmup`` bytes, calls ``begin_timed()``, reads ``nbytes``
more and calls ``end_timed()``, handing every received piece to ``consume(data)`` (which verifies
it; the caller decides how, and may exclude that cost from its CPU window). The modes, named as
everywhere in the benchmark (:data:`zcnet.bench.modes.ASYNCIO_RECEIVE_MODES`):

* ``"zcnet-aio"``: :class:`zcnet.aio.ZcStream.recv` (pages mapped by ``TCP_ZEROCOPY_RECEIVE``
  when the MSS is a page multiple and the sender used ``MSG_ZEROCOPY``; docs/ARCHITECTURE.md,
  'Receive: mappable pages'), each chunk released after ``consume``;
* ``"asyncio-read"``: ``asyncio.StreamReader.read`` (one copy into the reader's buffer and one
  into the returned ``bytes``);
* ``"asyncio-readexactly"``: ``asyncio.StreamReader.readexactly`` of each piece;
* ``"asyncio-buffered"``: :class:`asyncio.BufferedProtocol` receiving straight into one
  preallocated buffer (one copy, the cheapest asyncio can do).

Each runs on ``"asyncio"`` (the default selector loop) or ``"uvloop"`` (the rx experiment's
``NAME-uvloop``). The mode takes ownership of ``sock`` (pass a ``dup()`` to keep using the
connection) and closes it. :mod:`zcnet.bench.receivers` runs them in the ``rx`` experiment;
``scripts/aio_cpu.py`` runs them on their own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final

from zcnet.bench.modes import ASYNCIO_RECEIVE_MODES
from zcnet.errors import ModeUnavailable

__all__ = ["AIO_LOOPS", "ASYNCIO_RECEIVE_MODES", "loop_factory", "receive"]

#: The event loops each mode runs on.
AIO_LOOPS: Final = ("asyncio", "uvloop")

Consume = Callable[[Any], None]


def _noop() -> None:
    pass


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of new event loops of kind ``loop`` (``"asyncio"`` or ``"uvloop"``)."""
    if loop == "asyncio":
        return asyncio.SelectorEventLoop
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as e:
            raise ModeUnavailable(
                f"uvloop is not installed: {e} (pip install 'zcnet[uvloop]')") from e
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ModeUnavailable(f"unknown loop {loop!r} (choose from {AIO_LOOPS})")


class _Phases:
    """Splits the byte stream into warm-up and timed parts and feeds ``consume``."""

    def __init__(self, warmup: int, nbytes: int, consume: Consume,
                 begin_timed: Callable[[], None], end_timed: Callable[[], None]) -> None:
        self.warmup = warmup
        self.total = warmup + nbytes
        self.got = 0
        self.consume = consume
        self.begin_timed = begin_timed
        self.end_timed = end_timed
        if warmup == 0:
            begin_timed()

    @property
    def left(self) -> int:
        return self.total - self.got

    def feed(self, data: Any) -> None:
        """Consume ``data`` (a buffer), starting the timed phase exactly at its boundary."""
        n = len(data)
        if self.got < self.warmup < self.got + n:
            k = self.warmup - self.got
            view = memoryview(data)
            self.consume(view[:k])
            self.got += k
            self.begin_timed()
            self.consume(view[k:])
            self.got += n - k
        else:
            self.consume(data)
            self.got += n
            if self.got == self.warmup and n:
                self.begin_timed()
        if self.got >= self.total:
            self.end_timed()


async def _zcnet_stream(sock: socket.socket, ph: _Phases, size: int,
                        rcvlowat: int = 0) -> dict[str, Any]:
    try:
        from zcnet.aio import ZcStream
        from zcnet.receiver import RecvPolicy
    except ImportError as e:
        raise ModeUnavailable(f"zcnet.aio is not available: {e}") from e

    stream = ZcStream(sock, recv_policy=RecvPolicy(rcvlowat=rcvlowat))
    mapped = copied = chunks = 0
    try:
        while ph.left:
            with await stream.recv(min(size, ph.left)) as chunk:
                chunks += 1
                n = len(chunk)
                if not n:
                    raise EOFError(f"EOF with {ph.left} bytes missing")
                timed = min(n, ph.got + n - ph.warmup) if ph.got + n > ph.warmup else 0
                if chunk.mapped:
                    mapped += timed
                else:
                    copied += timed
                ph.feed(chunk.view)
        stats = stream.recv_stats
        return {
            "bytes_mapped": mapped,
            "bytes_copied": copied,
            "rx_mode": str(stats.mode),
            "fallback_reason": stats.fallback_reason,
            "chunks": chunks,
            "loop_wakeups": stream.watcher.wakeups,
        }
    finally:
        await stream.aclose()


async def _asyncio_streams(sock: socket.socket, ph: _Phases, size: int,
                           exactly: bool = False) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(sock=sock, limit=2 * size)
    try:
        while ph.left:
            n = min(size, ph.left)
            try:
                data = await (reader.readexactly(n) if exactly else reader.read(n))
            except asyncio.IncompleteReadError as e:
                raise EOFError(f"EOF with {ph.left - len(e.partial)} bytes missing") from e
            if not data:
                raise EOFError(f"EOF with {ph.left} bytes missing")
            ph.feed(data)
    finally:
        writer.close()
    return {}


async def _asyncio_readexactly(sock: socket.socket, ph: _Phases, size: int) -> dict[str, Any]:
    return await _asyncio_streams(sock, ph, size, exactly=True)


class _IntoBuffer(asyncio.BufferedProtocol):
    def __init__(self, ph: _Phases, size: int, done: asyncio.Future[None]) -> None:
        self.ph = ph
        self.buf = memoryview(bytearray(size))
        self.done = done
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf[:min(len(self.buf), self.ph.left)] if self.ph.left else self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.ph.feed(self.buf[:nbytes])
        if not self.ph.left and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool | None:
        if not self.done.done():
            self.done.set_exception(EOFError(f"EOF with {self.ph.left} bytes missing"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or EOFError(f"EOF with {self.ph.left} bytes missing"))


async def _buffered_protocol(sock: socket.socket, ph: _Phases, size: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.connect_accepted_socket(lambda: _IntoBuffer(ph, size, done), sock)
    try:
        await done
    finally:
        transport.close()
    return {}


_MODES: Final[dict[str, Callable[[socket.socket, _Phases, int],
                                 Coroutine[Any, Any, dict[str, Any]]]]] = {
    "zcnet-aio": _zcnet_stream,
    "asyncio-read": _asyncio_streams,
    "asyncio-readexactly": _asyncio_readexactly,
    "asyncio-buffered": _buffered_protocol,
}


def receive(
    mode: str, loop: str, sock: socket.socket, *, warmup: int, nbytes: int, size: int,
    consume: Consume, begin_timed: Callable[[], None] = _noop,
    end_timed: Callable[[], None] = _noop, rcvlowat: int = 0,
) -> dict[str, Any]:
    """Receive ``warmup + nbytes`` bytes from ``sock`` with ``mode`` on a new ``loop``.

    Takes ownership of ``sock`` (closed at the end). ``consume`` gets every piece in order and
    should verify it (raise on a mismatch). Returns ``{"mode", "loop", "bytes", ...}`` where
    ``bytes`` counts every byte received and handed to ``consume``, plus mode-specific fields
    (for ``"zcnet-aio"``: ``bytes_mapped``/``bytes_copied`` of the timed phase).
    ``rcvlowat`` is the zcnet stream's ``RecvPolicy.rcvlowat`` (tcp_mmap's SO_RCVLOWAT hint:
    readiness, hence each receive, waits for that many bytes); the other modes ignore it.

    Raises:
        ModeUnavailable: unknown mode or loop, or uvloop missing.
        EOFError: the peer closed before all bytes arrived.
    """
    try:
        if mode not in _MODES:
            raise ModeUnavailable(
                f"unknown asyncio receive mode {mode!r} (choose from {ASYNCIO_RECEIVE_MODES})")
        factory = loop_factory(loop)
        if size <= 0 or warmup < 0 or nbytes < 0:
            raise ValueError("size must be positive, warmup and nbytes non-negative")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    ph = _Phases(warmup, nbytes, consume, begin_timed, end_timed)
    with asyncio.Runner(loop_factory=factory) as runner:
        if mode == "zcnet-aio":
            extra = runner.run(_zcnet_stream(sock, ph, size, rcvlowat))
        else:
            extra = runner.run(_MODES[mode](sock, ph, size))
    if ph.total == 0:
        end_timed()
    result: dict[str, Any] = {"mode": mode, "loop": loop, "bytes": ph.got}
    result.update(extra)
    return result
