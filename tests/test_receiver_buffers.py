"""Chunks as buffers under every lifetime misuse, and the reuse of windows and copy buffers.

A window (or copy buffer) must not be reused while anything can still read the chunk that was
over it: the chunk itself, its ``view``, ``memoryview(chunk)``, slices and views of views, numpy
arrays. With the compiled extension the chunk counts its exports exactly (a PinGroup per window
or buffer); in the pure-Python implementation CPython's export count of the mmap says it, and
the chunk is a buffer only from Python 3.12 (the cases that need it skip on 3.11 and say why).
Every test moves real bytes over real sockets and checks each one against the pattern.
"""

from __future__ import annotations

import gc
import hashlib
import socket
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest

from tests.conftest import requires_netns, requires_zerocopy
from tests.rx_helpers import PATTERN, read_verified, sending, tcp_pair
from zcnet._accel import speedups
from zcnet.errors import BufferLifetimeError
from zcnet.lowlevel.bufaddr import buffer_address
from zcnet.netns import Netns
from zcnet.receiver import Chunk, Receiver, RecvPolicy

MIB = 1024 * 1024
WINDOW = 256 * 1024

chunk_is_buffer = pytest.mark.skipif(
    speedups is None and sys.version_info < (3, 12),
    reason="the pure-Python Chunk is a buffer from Python 3.12 (PEP 688); on 3.11 only the "
           "compiled one is")

# An export taken from a chunk and the offset of its first byte in the chunk.
Export = Callable[[Chunk], tuple[object, int]]
EXPORTS: list[object] = [
    pytest.param(lambda c: (memoryview(c), 0), id="memoryview", marks=chunk_is_buffer),
    pytest.param(lambda c: (memoryview(c)[100:5000], 100), id="slice", marks=chunk_is_buffer),
    pytest.param(lambda c: (memoryview(memoryview(c)[10:])[5:], 15), id="nested",
                 marks=chunk_is_buffer),
    pytest.param(lambda c: (np.frombuffer(c, dtype=np.uint8)[7:], 7), id="numpy",
                 marks=chunk_is_buffer),
    pytest.param(lambda c: (c.view[3:4099], 3), id="view-slice"),
    pytest.param(lambda c: (memoryview(c.view)[1:], 1), id="view-of-view"),
    pytest.param(lambda c: (np.frombuffer(c.view, dtype=np.uint8), 0), id="numpy-of-view"),
]


def _as_bytes(export: object) -> bytes:
    return export.tobytes() if isinstance(export, np.ndarray) else bytes(export)  # type: ignore[call-overload]


def _recv_mapped(rx: Receiver, off: int) -> tuple[int, Chunk]:
    """Receive (verifying copied chunks) until a mapped chunk comes; returns its offset and it."""
    while True:
        chunk = rx.recv(WINDOW, timeout=30)
        assert chunk, "EOF before a mapped chunk"
        if chunk.mapped:
            assert PATTERN.matches(off, chunk.view)
            return off, chunk
        with chunk:
            assert PATTERN.matches(off, chunk.view)
            off += len(chunk)


def _copy_until(rx: Receiver, off: int, reason: str) -> int:
    """Receive copied chunks (verified) until ``reason`` has been counted; returns the offset."""
    start = off
    while rx.stats.copy_reasons.get(reason, 0) == 0:
        with rx.recv(WINDOW, timeout=30) as chunk:
            assert chunk and not chunk.mapped, rx.stats
            assert PATTERN.matches(off, chunk.view)
            off += len(chunk)
        assert off - start < 8 * WINDOW, rx.stats
    return off


def _mapped_policy(max_windows: int) -> RecvPolicy:
    return RecvPolicy(window_bytes=WINDOW, max_windows=max_windows, rcvlowat=WINDOW,
                      force_zerocopy=True)


@requires_netns
@requires_zerocopy
@pytest.mark.parametrize("take", EXPORTS)
def test_an_export_alive_at_release_keeps_the_window(netns: Netns, take: Export) -> None:
    total = 8 * MIB
    client, server = tcp_pair(netns)
    with Receiver(server, _mapped_policy(1)) as rx, sending(client, total):
        off, chunk = _recv_mapped(rx, 0)
        expected = chunk.tobytes()
        export, start = take(chunk)
        chunk.release()
        with pytest.raises(BufferLifetimeError):
            _ = chunk.view
        assert rx.stats.windows_in_use == 1
        # the one window is held: receives copy (windows_busy) and never remap it
        off = _copy_until(rx, off + len(expected), "windows_busy")
        assert rx.stats.windows_mapped == 1
        got = _as_bytes(export)
        assert got == expected[start:start + len(got)]  # the bytes received, not newer ones
        del export
        gc.collect()
        assert rx.stats.windows_in_use == 0
        mapped_before = rx.stats.bytes_mapped
        read_verified(rx, total - off, max_bytes=WINDOW, start=off)
        st = rx.stats
        assert st.bytes_mapped > mapped_before and st.windows_mapped == 1, st


@requires_netns
@requires_zerocopy
def test_a_chunk_dropped_without_release_frees_its_window(netns: Netns) -> None:
    total = 4 * MIB
    client, server = tcp_pair(netns)
    with Receiver(server, _mapped_policy(1)) as rx, sending(client, total):
        off, chunk = _recv_mapped(rx, 0)
        off += len(chunk)
        assert rx.stats.windows_in_use == 1
        del chunk
        gc.collect()
        assert rx.stats.windows_in_use == 0
        read_verified(rx, total - off, max_bytes=WINDOW, start=off)
        assert rx.stats.windows_mapped == 1


@requires_netns
@requires_zerocopy
def test_all_windows_held_by_exports_then_receives_copy(netns: Netns) -> None:
    total = 16 * MIB
    client, server = tcp_pair(netns)
    with Receiver(server, _mapped_policy(2)) as rx, sending(client, total):
        held: list[tuple[memoryview, bytes]] = []
        off = 0
        while len(held) < 2:
            off, chunk = _recv_mapped(rx, off)
            with chunk:
                held.append((chunk.view[1:], chunk.tobytes()[1:]))
                off += len(chunk)
        st = rx.stats
        assert st.windows_in_use == 2 and st.windows_mapped == 2, st
        off = _copy_until(rx, off, "windows_busy")
        for view, expected in held:
            assert view == expected
        del view
        held.clear()
        assert rx.stats.windows_in_use == 0
        read_verified(rx, total - off, max_bytes=WINDOW, start=off)
        assert rx.stats.windows_mapped == 2


def _through_socket(data: Chunk) -> bytes:
    """``sendall(data)`` over a socketpair, read back on a thread."""
    a, b = socket.socketpair()
    got = bytearray()

    def reader() -> None:
        while piece := b.recv(1 << 16):
            got.extend(piece)

    t = threading.Thread(target=reader)
    t.start()
    with a, b:
        a.sendall(data)  # type: ignore[call-overload]
        a.shutdown(socket.SHUT_WR)
        t.join(30)
    return bytes(got)


@chunk_is_buffer
def test_copied_chunk_is_a_buffer_and_raises_after_release() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    policy = RecvPolicy(min_map_bytes=1 << 30)  # every receive is a copy (small_request)
    with Receiver(server, policy) as rx, sending(client, 64 * 1024, zerocopy=False):
        chunk = rx.recv(64 * 1024, timeout=30)
        n = len(chunk)
        assert n and not chunk.mapped
        expected = PATTERN.block(0, n).tobytes()
        assert bytes(chunk) == expected  # type: ignore[call-overload]
        assert hashlib.sha256(chunk).digest() == hashlib.sha256(expected).digest()  # type: ignore[arg-type]
        assert np.frombuffer(chunk, dtype=np.uint8).tobytes() == expected  # type: ignore[call-overload]
        assert _through_socket(chunk) == expected
        with chunk:
            pass
        chunk.release()  # idempotent
        assert len(chunk) == n
        for use in (lambda: chunk.view, chunk.tobytes, lambda: memoryview(chunk),  # type: ignore[arg-type]
                    lambda: bytes(chunk),  # type: ignore[call-overload]
                    lambda: hashlib.sha256(chunk)):  # type: ignore[arg-type]
            with pytest.raises(BufferLifetimeError):
                use()
        read_verified(rx, 64 * 1024 - n, start=n)


def _addr(chunk: Chunk) -> int:
    # (not view.release(): in the pure-Python implementation that is the chunk's own view)
    return buffer_address(chunk.view)


def test_copy_receives_reuse_buffers_and_never_overwrite_live_chunks() -> None:
    total = 32 * MIB
    size = 64 * 1024
    client, server = tcp_pair(None, host="127.0.0.1")
    policy = RecvPolicy(min_map_bytes=1 << 30, copy_buffers=2)  # every receive copies
    with Receiver(server, policy) as rx, sending(client, total, zerocopy=False):
        off = 0

        def recv() -> tuple[int, Chunk]:
            nonlocal off
            chunk = rx.recv(size, timeout=30)
            assert chunk, "unexpected EOF"
            assert PATTERN.matches(off, chunk.view)
            at = off
            off += len(chunk)
            return at, chunk

        # released in time: every receive lands in the same (first) buffer
        addrs = set()
        for _ in range(16):
            _, chunk = recv()
            with chunk:
                addrs.add(_addr(chunk))
        assert len(addrs) == 1
        first = addrs.pop()
        # one held: the next receives use the second buffer
        at1, held1 = recv()
        assert _addr(held1) == first
        at2, held2 = recv()
        assert _addr(held2) != first
        second = _addr(held2)
        # both held (one through an export only): receives copy into fresh memory
        export = held2.view[5:]
        held2.release()
        for _ in range(8):
            _, chunk = recv()
            with chunk:
                assert _addr(chunk) not in (first, second)
        assert PATTERN.matches(at1, held1.view)  # their bytes are still theirs
        assert PATTERN.matches(at2 + 5, export)
        held1.release()
        _, chunk = recv()
        with chunk:
            assert _addr(chunk) == first
        del export
        _, chunk = recv()
        with chunk:
            assert _addr(chunk) == first  # the first free buffer again
        read_verified(rx, total - off, max_bytes=size, start=off)
        assert rx.stats.bytes_mapped == 0


def test_copy_buffer_grows_and_caps_a_copied_chunk_at_window_bytes() -> None:
    total = 8 * MIB
    client, server = tcp_pair(None, host="127.0.0.1")
    policy = RecvPolicy(window_bytes=128 * 1024, min_map_bytes=1 << 30, rcvlowat=128 * 1024)
    with Receiver(server, policy) as rx, sending(client, total, zerocopy=False):
        off = 0
        for max_bytes in (1000, 4096, 50_000, 1 * MIB, 1 * MIB):
            with rx.recv(max_bytes, timeout=30) as chunk:
                assert 0 < len(chunk) <= min(max_bytes, 128 * 1024)
                assert PATTERN.matches(off, chunk.view)
                off += len(chunk)
        read_verified(rx, total - off, max_bytes=1 * MIB, start=off)
