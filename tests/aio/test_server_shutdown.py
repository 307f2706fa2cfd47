"""ZcServer shutdown with live clients: bounded, without spinning, on both loops.

``wait_closed()`` lets handlers run for ``shutdown_timeout`` seconds, cancels the rest, and each
cancelled handler's stream drains for at most ``drain_timeout``: the whole wait is documented to
end within ``shutdown_timeout + drain_timeout + 1`` seconds of ``close()``. While it waits, the
process must sleep (Python 3.12 made ``gather()`` of finished tasks complete without yielding to
the loop, which turned the old wait into a busy loop that never ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet.aio import ZcServer, ZcStream, start_server
from zcnet.errors import ZcnetError
from zcnet.sender import SendPolicy

from ..conftest import ZEROCOPY_SKIP
from .conftest import Runner

P = StreamPattern(4 * 1024 * 1024)
SHUTDOWN = 0.5  # shutdown_timeout of the servers under test
DRAIN = 0.5  # drain_timeout of their streams
BOUND = SHUTDOWN + DRAIN + 1.0  # the documented bound of wait_closed()
CPU_SHARE = 0.05  # "a few percent of a core" while waiting
REQUEST = 1 << 20  # what a mid-receive handler waits for; clients send a part of it
SENT_BY_CLIENT = 100_000
SERVER_SEND = 64 * 1024 * 1024  # far more than the socket buffers hold: the handler blocks


@dataclass
class Handlers:
    """What the handlers did: names of those started, cancelled, and bytes they got or sent."""

    started: dict[str, asyncio.Event] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    received: dict[str, int] = field(default_factory=dict)

    async def run(self, stream: ZcStream) -> None:
        kind = (await stream.readexactly(8)).decode().strip()
        self.started.setdefault(kind, asyncio.Event()).set()
        try:
            if kind == "idle":
                await stream.recv(REQUEST)  # the client never sends more
            elif kind == "recv":
                buf = bytearray(REQUEST)
                view = memoryview(buf)
                got = 0
                while got < REQUEST:
                    n = await stream.recv_into(view[got:])
                    if not n:
                        break
                    assert P.matches(0, view[got:got + n]), "the handler received bad bytes"
                    got += n
                    self.received[kind] = got
            elif kind == "send":
                for off in range(0, SERVER_SEND, P.max_block):
                    await stream.send(P.block(off, P.max_block))
        except asyncio.CancelledError:
            self.cancelled.add(kind)
            raise


def _connect(port: int, kind: str) -> socket.socket:
    """A blocking client that announces which handler it wants (and sends a part for "recv")."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(kind.ljust(8).encode())
    if kind == "recv":
        sock.sendall(P.block(0, SENT_BY_CLIENT))
    return sock


async def _timed_shutdown(server: ZcServer) -> tuple[float, float]:
    """close() + wait_closed(): (wall seconds, process CPU seconds) spent."""
    t0, c0 = time.monotonic(), time.process_time()
    server.close()
    await server.wait_closed()
    return time.monotonic() - t0, time.process_time() - c0


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the peer sent until EOF or a reset."""
    out = bytearray()
    sock.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            out += chunk
    return bytes(out)


@pytest.mark.parametrize("kinds", [("idle",), ("recv",), ("send",), ("idle", "recv", "send")],
                         ids=["idle", "mid-receive", "mid-send", "all-three"])
@pytest.mark.parametrize("forced", [False, True], ids=["policy", "forced-zc"])
def test_close_with_live_clients_is_bounded_and_sleeps(run: Runner, kinds: tuple[str, ...],
                                                        forced: bool) -> None:
    if forced and ZEROCOPY_SKIP:
        pytest.skip(ZEROCOPY_SKIP)
    handlers = Handlers()
    clients: dict[str, socket.socket] = {}

    async def main() -> tuple[float, float, ZcServer]:
        server = await start_server(
            handlers.run, "127.0.0.1", 0, shutdown_timeout=SHUTDOWN,
            send_policy=SendPolicy(force_zerocopy=forced, drain_timeout=DRAIN))
        for kind in kinds:
            handlers.started.setdefault(kind, asyncio.Event())
            clients[kind] = _connect(server.port, kind)
        for kind in kinds:
            await asyncio.wait_for(handlers.started[kind].wait(), 10)
        await asyncio.sleep(0.2)  # let each handler reach its blocking await
        assert server.active_handlers == len(kinds)
        wall, cpu = await _timed_shutdown(server)
        return wall, cpu, server

    try:
        wall, cpu, server = run(main())
        assert wall < BOUND, f"wait_closed() took {wall:.2f} s, documented bound {BOUND} s"
        assert cpu <= CPU_SHARE * wall + 0.02, f"{cpu:.3f} s of CPU in {wall:.2f} s of waiting"
        assert wall >= SHUTDOWN * 0.9  # handlers were given their grace period
        assert server.active_handlers == 0 and not server.is_serving()
        assert handlers.cancelled == set(kinds)
        if "recv" in kinds:
            assert handlers.received["recv"] == SENT_BY_CLIENT
        if "send" in kinds:
            # a partial message, then the end: every byte that arrived is the right one
            data = _read_to_end(clients["send"])
            assert 0 < len(data) < SERVER_SEND
            assert P.matches(0, data)
        for kind in kinds:
            if kind != "send":
                assert _read_to_end(clients[kind]) == b""  # EOF or a reset, not a hang
    finally:
        for sock in clients.values():
            sock.close()


def test_handler_that_ignores_cancellation_is_abandoned_within_the_bound(
        run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="zcnet.aio._server")
    released = asyncio.Event()
    seen: list[ZcStream] = []

    async def stubborn(stream: ZcStream) -> None:
        seen.append(stream)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await released.wait()  # swallows the cancellation until the test lets it go

    async def main() -> float:
        server = await start_server(stubborn, "127.0.0.1", 0, shutdown_timeout=0.2,
                                    send_policy=SendPolicy(drain_timeout=0.2))
        client = _connect(server.port, "idle")
        try:
            while not seen:
                await asyncio.sleep(0.01)
            wall, _ = await _timed_shutdown(server)
            assert seen[0].is_closing()  # its stream was aborted
            with pytest.raises(ZcnetError):
                await seen[0].recv(1)
            assert server.active_handlers == 1  # left running, not waited for
        finally:
            released.set()
            client.close()
        await asyncio.sleep(0.05)
        assert server.active_handlers == 0
        return wall

    wall = run(main())
    assert wall < 0.2 + 0.2 + 1.0 + 0.5
    assert "ignored its cancellation" in caplog.text


def test_handlers_that_finish_in_time_are_not_cancelled(run: Runner) -> None:
    finished: list[int] = []

    async def slow(stream: ZcStream) -> None:
        await asyncio.sleep(0.3)
        finished.append(len(await stream.readexactly(3)))

    async def main() -> float:
        server = await start_server(slow, "127.0.0.1", 0, shutdown_timeout=5)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with contextlib.closing(sock):
            sock.sendall(b"abc")
            while server.active_handlers == 0:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            async with server:  # __aexit__: close() + wait_closed()
                pass
            return time.monotonic() - t0

    wall = run(main())
    assert finished == [3]
    assert wall < 5  # returned when the handler did, not at the deadline


def test_wait_closed_waits_for_close(run: Runner) -> None:
    async def noop(stream: ZcStream) -> None:
        return None

    async def main() -> None:
        server = await start_server(noop, "127.0.0.1", 0)
        waiter = asyncio.create_task(server.wait_closed())
        await asyncio.sleep(0.1)
        assert not waiter.done() and server.is_serving()
        server.close()
        await asyncio.wait_for(waiter, 5)
        await server.wait_closed()  # again: at once

    run(main())


def test_negative_shutdown_timeout_is_refused(run: Runner) -> None:
    async def noop(stream: ZcStream) -> None:
        return None

    async def main() -> None:
        with pytest.raises(ValueError, match="shutdown_timeout"):
            await start_server(noop, "127.0.0.1", 0, shutdown_timeout=-1)

    run(main())
