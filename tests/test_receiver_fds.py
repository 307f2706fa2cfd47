"""File descriptors held by Receivers (and a Sender), counted in /proc/self/fd.

The documented counts (docs/receive.md, 'File descriptors'): a Receiver holds its socket and
nothing else, however many windows it maps; one epoll fd is added, once, when it has to sleep
while a MSG_ZEROCOPY sender on the same socket has completions queued. A Sender holds its socket
only (its select.poll object is not a kernel object). close() gives every fd back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.conftest import requires_zerocopy
from tests.rx_helpers import PATTERN, open_fds, send_stream, sending, tcp_pair
from tests.test_receiver_bidirectional import _leave_completions_pending
from zcnet import TimeoutExpired
from zcnet.receiver import Receiver, RecvPolicy, make_mappable_listener
from zcnet.sender import Sender, SendPolicy

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]

pytestmark = requires_zerocopy


def _mappable_pair() -> tuple[object, object]:
    return tcp_pair(None, host="127.0.0.1",
                    listener=lambda: make_mappable_listener("127.0.0.1"))


def test_receivers_hold_only_their_sockets_and_give_everything_back() -> None:
    base = open_fds()
    pairs = [_mappable_pair() for _ in range(3)]
    assert open_fds() == base + 6  # two sockets per pair
    policy = RecvPolicy(force_zerocopy=True, window_bytes=256 * 1024, max_windows=4)
    receivers = [Receiver(server, policy) for _, server in pairs]  # type: ignore[arg-type]
    assert open_fds() == base + 6  # creating a Receiver opens nothing
    for (client, _), rx in zip(pairs, receivers, strict=True):
        total = 4 * MIB
        with sending(client, total):  # type: ignore[arg-type]
            held = []
            off = 0
            while True:
                chunk = rx.recv(256 * 1024, timeout=30)
                if not chunk:
                    break
                assert PATTERN.matches(off, chunk.view), f"corrupt bytes at {off}"
                off += len(chunk)
                held.append(chunk)  # keep windows busy: the receiver maps more of them
                if len(held) > 3:
                    held.pop(0).release()
                assert open_fds() <= base + 6, "a window or a wait opened an fd"
            for c in held:
                c.release()
        assert off == total
        st = rx.stats
        assert st.bytes_mapped > 0 and st.windows_mapped >= 2, st
    # the clients were closed by send_stream; each receiver still holds exactly its socket
    assert open_fds() == base + 3
    for rx in receivers:
        rx.close()
    assert open_fds() == base


def test_bidirectional_receiver_adds_one_epoll_fd_once() -> None:
    base = open_fds()
    a, b = tcp_pair(None, host="::1")
    rx = Receiver(a)
    assert open_fds() == base + 2
    _leave_completions_pending(a, b)
    for _ in range(3):  # sleeping while completions pend: one epoll, made the first time
        with pytest.raises(TimeoutExpired):
            rx.recv(4096, timeout=0.05)
        assert open_fds() == base + 3
    b.sendall(b"reply")
    with rx.recv(4096, timeout=5) as chunk:
        assert chunk.tobytes() == b"reply"
    rx.close()
    b.close()
    assert open_fds() == base


def test_sender_holds_only_its_socket() -> None:
    base = open_fds()
    client, server = tcp_pair(None, host="127.0.0.1")
    tx = Sender(client, SendPolicy(force_zerocopy=True))
    assert open_fds() == base + 2
    payload = bytes(PATTERN.block(0, MIB))
    got = bytearray()

    def drain() -> None:
        while len(got) < 4 * MIB:
            got.extend(server.recv(MIB))

    t = threading.Thread(target=drain)
    t.start()
    for i in range(4):
        tx.send(payload)
        assert open_fds() == base + 2, f"send {i} opened an fd"
    tx.flush(timeout=30)
    t.join(30)
    assert len(got) == 4 * MIB and got == payload * 4
    assert open_fds() == base + 2
    tx.close()
    server.close()
    assert open_fds() == base


# Windows need no file descriptor: with RLIMIT_NOFILE just above the highest fd and every hole
# below it filled (no new fd can be made: EMFILE, checked), a receiver still maps (in a
# subprocess, so the limit stays there). Before windows stopped dup()ing the socket (CPython's
# mmap.mmap(fd)), this was EMFILE on the first window.
_NO_SPARE_FD = textwrap.dedent("""
    import json, os, resource, threading
    from tests.rx_helpers import PATTERN, send_stream, tcp_pair
    from zcnet.receiver import Receiver, RecvPolicy, make_mappable_listener
    client, server = tcp_pair(None, host="127.0.0.1",
                              listener=lambda: make_mappable_listener("127.0.0.1"))
    total = 8 << 20
    t = threading.Thread(target=send_stream, args=(client, total))
    t.start()
    rx = Receiver(server, RecvPolicy(force_zerocopy=True, window_bytes=1 << 20, max_windows=4))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    filler = []  # fill the holes below the limit: afterwards no fd can be made at all
    while True:
        try:
            filler.append(os.dup(0))
        except OSError as e:
            probe = e.errno
            break
    off, held = 0, []
    while True:
        c = rx.recv(1 << 20, timeout=30)
        if not c:
            break
        assert PATTERN.matches(off, c.view), off
        off += len(c)
        held.append(c)
        if len(held) > 2:
            held.pop(0).release()
    for c in held:
        c.release()
    t.join()
    st = rx.stats
    rx.close()
    print(json.dumps({"probe": probe, "off": off, "mapped": st.bytes_mapped,
                      "windows": st.windows_mapped, "transient": st.transient_map_errors,
                      "mode": st.mode}))
""")


def test_windows_need_no_spare_fd() -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, "-c", _NO_SPARE_FD], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["probe"] == 24, res  # EMFILE: the limit leaves no fd to spare
    assert res["off"] == 8 << 20
    assert res["mapped"] > 0 and res["windows"] >= 2 and res["transient"] == 0, res
    assert res["mode"] == "zerocopy"


def test_send_stream_helper_closes_its_socket() -> None:
    base = open_fds()
    client, server = tcp_pair(None, host="127.0.0.1")
    send_stream(client, 1000, zerocopy=False)
    server.close()
    assert open_fds() == base
