"""Chunk and Lease as buffers (PEP 688, Python 3.12+), with the lifetime rules kept.

On 3.12 and newer a received :class:`Chunk` and a pool :class:`Lease` are buffers themselves:
``bytes()``, ``memoryview()``, ``hashlib``, numpy and sockets take them directly. Their exports
follow the same rules as their views: a window is not reused and a lease not released while any
export is alive. On 3.11 the objects are not buffers; ``.view`` is the way, and the tests say so.
"""

from __future__ import annotations

import hashlib
import io
import socket
import sys
import threading

import numpy as np
import pytest

from tests.conftest import requires_netns, requires_zerocopy
from tests.rx_helpers import PATTERN, read_verified, sending, tcp_pair
from zcnet._accel import speedups
from zcnet.errors import BufferLifetimeError
from zcnet.netns import Netns
from zcnet.receiver import Chunk, Receiver, RecvPolicy

MIB = 1024 * 1024
WINDOW = 256 * 1024

needs_pep688 = pytest.mark.skipif(sys.version_info < (3, 12),
                                  reason="Python classes can export buffers from 3.12 (PEP 688)")
# the compiled Chunk is a buffer on every version; the pure-Python one from 3.12 (PEP 688)
chunk_is_buffer = pytest.mark.skipif(
    speedups is None and sys.version_info < (3, 12),
    reason="the pure-Python Chunk is a buffer from Python 3.12 (PEP 688); on 3.11 only the "
           "compiled one is")


def _recv_mapped(rx: Receiver, off: int) -> tuple[int, Chunk]:
    """Receive (verifying copied chunks) until a mapped chunk comes; returns its offset and it."""
    while True:
        chunk = rx.recv(WINDOW, timeout=30)
        assert chunk, "EOF before a mapped chunk"
        if chunk.mapped:
            return off, chunk
        with chunk:
            assert PATTERN.matches(off, chunk.view)
            off += len(chunk)


def _through_socket(data: Chunk) -> bytes:
    """``sendall(data)`` over a socketpair, read back on a thread."""
    a, b = socket.socketpair()
    got = bytearray()

    def reader() -> None:
        while chunk := b.recv(1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    with a, b:
        a.sendall(data)  # type: ignore[arg-type]  # a buffer on 3.12+ (PEP 688)
        a.shutdown(socket.SHUT_WR)
        t.join(30)
    return bytes(got)


@chunk_is_buffer
@requires_netns
@requires_zerocopy
def test_mapped_chunk_is_a_buffer_and_its_exports_pin_the_window(netns: Netns) -> None:
    total = 8 * MIB
    client, server = tcp_pair(netns)
    policy = RecvPolicy(window_bytes=WINDOW, max_windows=1, rcvlowat=WINDOW, force_zerocopy=True)
    with Receiver(server, policy) as rx, sending(client, total):
        off, chunk = _recv_mapped(rx, 0)
        n = len(chunk)
        expected = chunk.view.tobytes()
        assert PATTERN.matches(off, expected)

        assert bytes(chunk) == expected  # type: ignore[call-overload]
        assert hashlib.sha256(chunk).digest() == hashlib.sha256(expected).digest()  # type: ignore[arg-type]
        arr = np.frombuffer(chunk, dtype=np.uint8)  # type: ignore[call-overload]
        assert not arr.flags.writeable and arr.tobytes() == expected
        del arr
        assert _through_socket(chunk) == expected
        with pytest.raises(TypeError):
            io.BytesIO(b"x" * n).readinto(chunk)  # type: ignore[arg-type]  # read-only

        held = memoryview(chunk)  # type: ignore[arg-type]
        assert held.readonly and held.nbytes == n
        chunk.release()
        with pytest.raises(BufferLifetimeError):
            memoryview(chunk)  # type: ignore[arg-type]
        # the export outlives release(): its window stays busy, so receives copy meanwhile
        assert rx.stats.windows_in_use == 1
        off2 = off + n
        while rx.stats.copy_reasons.get("windows_busy", 0) == 0:
            with rx.recv(WINDOW, timeout=30) as nxt:
                assert nxt and not nxt.mapped
                assert PATTERN.matches(off2, nxt.view)
                off2 += len(nxt)
            assert off2 - off < 4 * WINDOW, rx.stats
        assert held.tobytes() == expected  # still the bytes received, not newer ones
        held.release()
        assert rx.stats.windows_in_use == 0
        read_verified(rx, total - off2, max_bytes=WINDOW, start=off2)
        assert rx.stats.bytes_mapped > 0


# Lease: tests/test_pool_buffer.py (a buffer on 3.11 too with the compiled extension)
@pytest.mark.skipif(speedups is not None or sys.version_info >= (3, 12),
                    reason="checks the pure-Python Chunk on Python < 3.12")
def test_before_312_the_pure_python_chunk_is_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        memoryview(Chunk(memoryview(b"abc"), mapped=False))  # type: ignore[arg-type]
