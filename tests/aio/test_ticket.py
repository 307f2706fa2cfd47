"""AioTicket: pure logic (no sockets): waiting, callbacks, errors, cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from zcnet.aio import AioTicket
from zcnet.errors import ConnectionResetByPeer

from .conftest import Runner


def test_wait_resolves_on_finish_and_runs_callbacks_once(run: Runner) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        t = AioTicket(loop, 10, True)
        buf = bytearray(10)
        t._view = memoryview(buf)
        calls: list[str] = []
        t.add_done_callback(lambda tk: calls.append(f"a{tk.copied}"))
        waiters = [asyncio.create_task(t.wait()) for _ in range(3)]
        direct = asyncio.create_task(_await(t))
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        with pytest.raises(BufferError):
            buf.append(1)  # exported while pending
        t._finish(copied=True)
        await asyncio.gather(*waiters, direct)
        buf.append(1)  # the export is gone once done
        t.add_done_callback(lambda tk: calls.append("late"))  # runs at once
        assert t.done and t.copied is True
        return calls

    assert run(main()) == ["aTrue", "late"]


async def _await(t: AioTicket) -> None:
    await t


def test_error_wakes_waiters_and_cancel_leaves_ticket_alone(run: Runner) -> None:
    async def main() -> None:
        t = AioTicket(asyncio.get_running_loop(), 5, True)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await t  # cancelling the waiter must not cancel the ticket
        waiter = asyncio.create_task(t.wait())
        await asyncio.sleep(0)
        t._fail(ConnectionResetByPeer("reset"))
        with pytest.raises(ConnectionResetByPeer):
            await waiter
        t._finish(copied=False)  # a completion can still arrive after the failure
        assert t.done
        with pytest.raises(ConnectionResetByPeer):
            await t  # the failure is still reported: the data may not have arrived

    run(main())


def test_failing_callback_is_logged_not_raised(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        t = AioTicket(asyncio.get_running_loop(), 1, False)
        seen: list[int] = []

        def bad(_t: AioTicket) -> None:
            raise RuntimeError("callback bug")

        t.add_done_callback(bad)
        t.add_done_callback(lambda tk: seen.append(tk.nbytes))
        with caplog.at_level(logging.ERROR):
            t._finish(copied=False)
        assert seen == [1] and t.copied is None  # not zero-copy: copied stays None
        assert "callback" in caplog.text

    run(main())
