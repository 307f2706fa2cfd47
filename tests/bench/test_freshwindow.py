"""The bench-only naive receiver: a fresh window per receive, every byte verified."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import requires_netns, requires_zerocopy
from tests.rx_helpers import PATTERN, sending, socket_maps, tcp_pair
from zcnet.bench.freshwindow import FreshWindowReceiver
from zcnet.errors import TimeoutExpired
from zcnet.netns import Netns

pytestmark = [requires_netns, requires_zerocopy]


def _drain(rx: FreshWindowReceiver, sock: socket.socket, total: int, max_bytes: int) -> int:
    import select

    off = 0
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
    while True:
        try:
            chunk = rx.recv(max_bytes, timeout=0)
        except TimeoutExpired:
            assert p.poll(10_000), "no data within 10 s"
            continue
        with chunk:
            if not len(chunk):
                break
            assert len(chunk) <= max_bytes
            assert PATTERN.matches(off, chunk.view), f"corrupt bytes at {off}"
            off += len(chunk)
    return off


@pytest.mark.parametrize("max_bytes", [4096, 256 * 1024])
def test_fresh_windows_map_and_unmap(netns: Netns, max_bytes: int) -> None:
    total = 8 * 1024 * 1024 + 123  # an unmappable tail at the end
    client, server = tcp_pair(netns)
    maps0 = socket_maps()
    rx = FreshWindowReceiver(server)
    try:
        with sending(client, total):
            got = _drain(rx, server, total, max_bytes)
        st = rx.stats
    finally:
        rx.close()
    assert got == total
    assert st.bytes_mapped + st.bytes_copied == total
    assert st.bytes_mapped > total // 2          # MSS 61440 and a MSG_ZEROCOPY sender
    assert st.windows_mapped >= st.calls > 0     # one window per zero-copy call
    assert socket_maps() == maps0                # every window was unmapped


def test_argument_errors(netns: Netns) -> None:
    client, server = tcp_pair(netns)
    rx = FreshWindowReceiver(server)
    try:
        with pytest.raises(ValueError, match="timeout=0"):
            rx.recv(4096, timeout=1.0)
        with pytest.raises(ValueError, match="positive"):
            rx.recv(0, timeout=0)
        with pytest.raises(TimeoutExpired):
            rx.recv(4096, timeout=0)
    finally:
        rx.close()
        client.close()
