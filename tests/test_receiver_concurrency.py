"""100 concurrent connections, RPC style plus some bulk: correctness, window reuse, no leaks."""

from __future__ import annotations

import gc
import select
import socket
import threading
from dataclasses import dataclass

from tests.conftest import requires_netns, requires_zerocopy
from tests.rx_helpers import PATTERN, drain_errqueue, open_fds, send_stream, socket_maps
from zcnet.errors import TimeoutExpired
from zcnet.netns import Netns
from zcnet.receiver import Receiver, RecvPolicy

pytestmark = [requires_netns, requires_zerocopy]

CONNS = 100
ROUNDS = 50
MSG = 4096
BULK = 16 * 1024 * 1024
BULK_EVERY = 10  # every 10th connection also sends a bulk message
CLIENT_THREADS = 4
MSG_ZEROCOPY = 0x4000000


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        assert k, "server closed early"
        got += k
    return bytes(buf)


def _client(socks: list[tuple[int, socket.socket]], errors: list[BaseException]) -> None:
    try:
        for _, s in socks:
            s.setsockopt(socket.SOL_SOCKET, 60, 1)
        for r in range(ROUNDS):
            for _, s in socks:
                s.sendall(PATTERN.block(r * MSG, MSG), MSG_ZEROCOPY)
                drain_errqueue(s)
            for _, s in socks:
                assert PATTERN.matches(r * MSG, _recv_exact(s, MSG)), "bad response"
        for i, s in socks:
            if i % BULK_EVERY == 0:
                send_stream(s, BULK, start=ROUNDS * MSG, close=False)
                assert PATTERN.matches(ROUNDS * MSG, _recv_exact(s, MSG)), "bad bulk ack"
        for _, s in socks:
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
            drain_errqueue(s)
            s.close()
    except BaseException as e:
        errors.append(e)
        for _, s in socks:
            s.close()


@dataclass
class _Conn:
    index: int
    sock: socket.socket
    rx: Receiver
    off: int = 0  # bytes received so far
    responses: int = 0
    warm_windows: int | None = None

    @property
    def expected(self) -> int:
        return ROUNDS * MSG + (BULK if self.index % BULK_EVERY == 0 else 0)

    def need(self) -> int:
        if self.off < ROUNDS * MSG:
            return MSG - self.off % MSG
        return min(self.expected - self.off, 2 * 1024 * 1024) or 65536


def test_hundred_connections_rpc_and_bulk(netns: Netns) -> None:
    gc.collect()
    fds0, maps0 = open_fds(), socket_maps()
    with netns.entered():
        ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        ls.bind(("::1", 0))
        ls.listen(CONNS)
        clients = [socket.create_connection(ls.getsockname()[:2]) for _ in range(CONNS)]
    conns: dict[int, _Conn] = {}
    poller = select.poll()
    for i in range(CONNS):
        s, _ = ls.accept()
        # min_map_bytes=4096: map even the 4 KB messages (the default copies them), so that
        # every connection exercises its window ring
        rx = Receiver(s, RecvPolicy(min_map_bytes=4096))
        conns[rx.fileno()] = _Conn(i, s, rx)
        poller.register(rx.fileno(), select.POLLIN)
    ls.close()

    errors: list[BaseException] = []
    groups = [list(enumerate(clients))[k::CLIENT_THREADS] for k in range(CLIENT_THREADS)]
    threads = [threading.Thread(target=_client, args=(g, errors), daemon=True) for g in groups]
    for t in threads:
        t.start()

    mapped = copied = 0
    peak_maps = maps0
    try:
        while conns:
            ready = poller.poll(30_000)
            assert ready, f"stalled; client errors: {errors}"
            for fd, _ in ready:
                c = conns[fd]
                while True:
                    try:
                        chunk = c.rx.recv(c.need(), timeout=0)
                    except TimeoutExpired:
                        break
                    with chunk:
                        if not chunk:
                            assert c.off == c.expected, f"conn {c.index}: early EOF at {c.off}"
                            st = c.rx.stats
                            assert st.windows_mapped == c.warm_windows, st
                            mapped += st.bytes_mapped
                            copied += st.bytes_copied
                            poller.unregister(fd)
                            c.rx.close()
                            del conns[fd]
                            break
                        assert PATTERN.matches(c.off, chunk.view), f"conn {c.index} at {c.off}"
                        c.off += len(chunk)
                    if c.off % MSG == 0 and c.off // MSG > c.responses and (
                        c.off <= ROUNDS * MSG or c.off == c.expected
                    ):
                        c.sock.sendall(PATTERN.block(c.responses * MSG, MSG))
                        c.responses += 1
                        if c.responses == 2:
                            c.warm_windows = c.rx.stats.windows_mapped
                            peak_maps = max(peak_maps, socket_maps())
    finally:
        for c in conns.values():
            c.rx.close()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert mapped + copied == CONNS * ROUNDS * MSG + (CONNS // BULK_EVERY) * BULK
    assert peak_maps > maps0  # the windows were there, and the check below can see them
    gc.collect()
    assert open_fds() == fds0
    assert socket_maps() == maps0
