"""A Receiver on a socket that also sends with MSG_ZEROCOPY (request/response on one connection).

Pending zero-copy completions make the socket report POLLERR until the sender reads its error
queue; the Receiver must neither mistake that for data nor busy-wait on it.
"""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from zcnet import Receiver, TimeoutExpired
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_ZEROCOPY

from .conftest import requires_zerocopy
from .rx_helpers import PATTERN, tcp_pair


def _leave_completions_pending(sock: socket.socket, peer: socket.socket) -> None:
    """Send 1 MiB with MSG_ZEROCOPY from ``sock`` and let ``peer`` read it; never reap."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    payload = bytes(PATTERN.block(0, 1 << 20))
    view = memoryview(payload)
    while view:
        view = view[sock.send(view, MSG_ZEROCOPY) :]
    got = bytearray()
    while len(got) < len(payload):
        got += peer.recv(1 << 20)
    assert got == payload
    # completions follow the peer's read on loopback; a queued one shows as POLLERR (reading
    # the error queue, even with MSG_PEEK, would dequeue it)
    poller = select.poll()
    poller.register(sock, 0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(ev & select.POLLERR for _, ev in poller.poll(10)):
            return
    pytest.fail("no zero-copy completion arrived")


@requires_zerocopy
def test_pending_completions_are_not_data_and_do_not_spin() -> None:
    a, b = tcp_pair()
    with b, Receiver(a) as rx:
        _leave_completions_pending(a, b)
        with pytest.raises(TimeoutExpired):
            rx.recv(4096, timeout=0)
        cpu0, t0 = sum(os.times()[:2]), time.monotonic()
        with pytest.raises(TimeoutExpired):
            rx.recv(4096, timeout=0.5)
        cpu, wall = sum(os.times()[:2]) - cpu0, time.monotonic() - t0
        assert wall >= 0.45
        assert cpu < 0.25 * wall, f"receiver spun: {cpu:.3f} CPU s in {wall:.3f} s"
        # data that arrives later is still delivered, byte for byte
        reply = bytes(PATTERN.block(7, 4096))
        b.sendall(reply)
        got = bytearray()
        while len(got) < len(reply):
            with rx.recv(4096 - len(got), timeout=5) as chunk:
                got += chunk.view
        assert got == reply
        b.shutdown(socket.SHUT_WR)
        with rx.recv(4096, timeout=5) as chunk:
            assert len(chunk) == 0  # EOF, not a phantom read


@requires_zerocopy
def test_reset_is_reported_while_completions_pend() -> None:
    a, b = tcp_pair()
    with Receiver(a) as rx:
        _leave_completions_pending(a, b)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b.close()  # linger 0: RST
        from zcnet import ConnectionResetByPeer

        with pytest.raises(ConnectionResetByPeer):
            while True:
                with rx.recv(4096, timeout=5) as chunk:
                    assert len(chunk), "EOF instead of the reset"
