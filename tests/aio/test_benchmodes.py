"""The benchmark receive modes move and verify every byte, on both loops."""

from __future__ import annotations

import socket
import threading

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet.aio._benchmodes import AIO_RECEIVE_MODES, ModeUnavailable, receive
from zcnet.receiver import make_mappable_listener
from zcnet.sender import Sender, SendPolicy

from .conftest import LOOPS

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


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("mode", AIO_RECEIVE_MODES)
def test_mode_receives_every_byte(mode: str, loop: str) -> None:
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
    if mode == "zcnet-aio stream":
        assert res["bytes_mapped"] + res["bytes_copied"] == nbytes


def test_unknown_mode_closes_socket() -> None:
    a, b = socket.socketpair()
    with b, pytest.raises(ModeUnavailable):
        receive("nope", "asyncio", a, warmup=0, nbytes=1, size=1, consume=print)
    assert a.fileno() == -1
