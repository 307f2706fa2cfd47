"""The nested-epoll watcher: readiness on both loops, and no busy loop while completions pend."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet.aio._watch import READABLE, WRITABLE, SocketWatcher
from zcnet.errors import SocketClosedError

from ..conftest import requires_zerocopy
from .conftest import Runner
from .helpers import drain_errqueue, raw_zerocopy_send, tcp_pair, wait_pollerr

IDLE_SECONDS = 0.5


def test_readable_wakes_on_data(run: Runner) -> None:
    a, b = tcp_pair()

    async def main() -> bytes:
        w = SocketWatcher(b.fileno())
        try:
            with pytest.raises(BlockingIOError):
                b.recv(10)
            w.clear(READABLE)
            asyncio.get_running_loop().call_later(0.05, a.send, b"hello")
            await w.wait(READABLE)
            return b.recv(10)
        finally:
            w.close()

    with a, b:
        assert run(main()) == b"hello"


def test_writable_wakes_when_peer_drains(run: Runner) -> None:
    a, b = tcp_pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    pattern = StreamPattern(1 << 20)
    n = 65536

    async def main() -> tuple[int, int]:
        w = SocketWatcher(a.fileno())
        sent = received = 0
        got = bytearray()
        try:
            while True:  # fill the send buffer and the peer's receive buffer
                try:
                    sent += a.send(pattern.block(sent, n))
                except BlockingIOError:
                    break
            w.clear(WRITABLE)

            def drain() -> None:
                nonlocal received
                while True:
                    try:
                        data = b.recv(1 << 20)
                    except BlockingIOError:
                        return
                    got.extend(data)
                    received += len(data)

            asyncio.get_running_loop().call_later(0.05, drain)
            await w.wait(WRITABLE)
            sent += a.send(pattern.block(sent, n))
            a.shutdown(socket.SHUT_WR)
            b.setblocking(True)
            while data := b.recv(1 << 20):
                got.extend(data)
                received += len(data)
        finally:
            w.close()
        assert pattern.matches(0, got)  # every byte, in order
        return sent, received

    with a, b:
        sent, received = run(main())
    assert sent == received and sent > 0


def test_close_fails_waiters(run: Runner) -> None:
    a, b = tcp_pair()

    async def main() -> None:
        w = SocketWatcher(b.fileno())
        w.clear(READABLE)
        task = asyncio.ensure_future(w.wait(READABLE))
        await asyncio.sleep(0)
        w.close()
        with pytest.raises(SocketClosedError):
            await task
        with pytest.raises(SocketClosedError):
            await w.wait(READABLE)
        w.close()  # idempotent

    with a, b:
        run(main())


def test_cancelled_wait_leaves_no_waiter(run: Runner) -> None:
    a, b = tcp_pair()

    async def main() -> bytes:
        w = SocketWatcher(b.fileno())
        try:
            w.clear(READABLE)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await w.wait(READABLE)
            assert w._waiters[READABLE] == []
            a.send(b"x")
            await w.wait(READABLE)
            return b.recv(10)
        finally:
            w.close()

    with a, b:
        assert run(main()) == b"x"


def test_peer_reset_wakes_reader(run: Runner) -> None:
    a, b = tcp_pair()

    async def main() -> None:
        w = SocketWatcher(b.fileno(), on_error=lambda: False)
        try:
            w.clear(READABLE)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            asyncio.get_running_loop().call_later(0.02, a.close)
            await w.wait(READABLE)
            with pytest.raises(ConnectionResetError):
                b.recv(10)
        finally:
            w.close()

    with a, b:
        run(main())


@requires_zerocopy
def test_no_spin_while_completions_pend(run: Runner) -> None:
    """Completions sit on the error queue (POLLERR) while a task awaits data: the loop idles."""
    a, b = tcp_pair()
    payload = bytes(range(256)) * 128

    async def main() -> tuple[float, float, int]:
        errors = 0

        def on_error() -> bool:
            nonlocal errors
            errors += 1
            return False  # deliberately never read the error queue

        w = SocketWatcher(a.fileno(), on_error=on_error)
        try:
            raw_zerocopy_send(a, payload)  # the completion arrives while we watch
            assert wait_pollerr(a)
            w.clear(READABLE)
            cpu0, t0 = time.process_time(), time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(IDLE_SECONDS):
                    await w.wait(READABLE)  # no data ever comes
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            assert errors >= 1  # the reaper was told about the completion
            return cpu, wall, w.wakeups
        finally:
            w.close()

    with a, b:
        cpu, wall, wakeups = run(main())
        assert wait_pollerr(a, 0)  # the completion is still pending: the test was meaningful
        received = bytearray()
        b.setblocking(True)
        while len(received) < len(payload):
            received += b.recv(1 << 20)
        assert received == payload
        assert drain_errqueue(a) >= 1
    assert wakeups <= 4, f"epoll fd woke the loop {wakeups} times: spinning"
    assert cpu < 0.25 * wall, f"{cpu:.3f} s CPU in {wall:.3f} s of idle waiting: spinning"


@requires_zerocopy
def test_on_error_reaper_drains_queue(run: Runner) -> None:
    a, b = tcp_pair()

    async def main() -> int:
        reaped = 0
        done = asyncio.get_running_loop().create_future()

        def on_error() -> bool:
            nonlocal reaped
            reaped += drain_errqueue(a)
            if reaped and not done.done():
                done.set_result(None)
            return False

        w = SocketWatcher(a.fileno(), on_error=on_error)
        try:
            for _ in range(4):
                raw_zerocopy_send(a, b"z" * 32768)
            await done
        finally:
            w.close()
        return reaped

    with a, b:
        assert run(main()) >= 1
        assert not wait_pollerr(a, 0)


@requires_zerocopy
def test_failing_error_callback_still_wakes_waiters(run: Runner) -> None:
    a, b = tcp_pair()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[object] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx.get("exception")))

        def broken() -> bool:
            raise RuntimeError("reaper bug")

        w = SocketWatcher(a.fileno(), on_error=broken)
        try:
            w.clear(READABLE)
            raw_zerocopy_send(a, b"q" * 32768)
            await w.wait(READABLE)  # woken by the EPOLLERR although the callback failed
            with pytest.raises(ValueError):
                await w.wait(READABLE | WRITABLE)
        finally:
            w.close()
        assert any(isinstance(e, RuntimeError) for e in reported)

    with a, b:
        run(main())
        drain_errqueue(a)
