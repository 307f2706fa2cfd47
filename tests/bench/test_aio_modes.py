"""The benchmark's asyncio receive modes move and verify every byte, on both loops."""

from __future__ import annotations

import socket
import threading

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet.bench import aio_modes
from zcnet.bench.aio_modes import AIO_LOOPS, receive
from zcnet.bench.modes import ASYNCIO_RECEIVE_MODES
from zcnet.errors import ModeUnavailable
from zcnet.receiver import make_mappable_listener
from zcnet.sender import Sender, SendPolicy

P = StreamPattern(1 << 20)


def _serve(port: int, total: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    with Sender(sock, SendPolicy(force_zerocopy=True)) as tx:
        off = 0
        while off < total:
            n = min(300_007, total - off)
            tx.send(P.block(off, n))
            off += n
        tx.flush(30)


def test_one_vocabulary() -> None:
    # the modes here are the rx experiment's asyncio modes, by the same names
    assert set(aio_modes._MODES) == set(ASYNCIO_RECEIVE_MODES)


@pytest.mark.parametrize("loop", AIO_LOOPS)
@pytest.mark.parametrize("mode", ASYNCIO_RECEIVE_MODES)
def test_mode_receives_every_byte(mode: str, loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop (the [uvloop] extra) is not installed")
    warmup, nbytes = 1_000_003, 3 * 1024 * 1024
    with make_mappable_listener("127.0.0.1", 0) as lsock:
        t = threading.Thread(target=_serve, args=(lsock.getsockname()[1], warmup + nbytes))
        t.start()
        conn, _ = lsock.accept()
    offset = 0
    events: list[tuple[str, int]] = []

    def consume(data: memoryview) -> None:
        nonlocal offset
        assert P.matches(offset, data), offset
        offset += len(data)

    try:
        res = receive(mode, loop, conn, warmup=warmup, nbytes=nbytes, size=128 * 1024,
                      consume=consume, begin_timed=lambda: events.append(("begin", offset)),
                      end_timed=lambda: events.append(("end", offset)))
    finally:
        t.join(30)
    assert res["bytes"] == offset == warmup + nbytes
    assert events == [("begin", warmup), ("end", warmup + nbytes)]
    assert conn.fileno() == -1  # the mode took ownership and closed it
    if mode == "zcnet-aio":
        assert res["bytes_mapped"] + res["bytes_copied"] == nbytes


def test_unknown_mode_or_loop_closes_socket() -> None:
    for mode, loop, message in (("nope", "asyncio", "unknown asyncio receive mode"),
                                ("asyncio-read", "no-such-loop", "unknown loop")):
        a, b = socket.socketpair()
        with b, pytest.raises(ModeUnavailable, match=message):
            receive(mode, loop, a, warmup=0, nbytes=1, size=1, consume=print)
        assert a.fileno() == -1
