"""Chunk lifetime: held chunks keep their bytes, released chunks raise, user slices pin windows."""

from __future__ import annotations

import gc

import pytest

from tests.conftest import requires_netns, requires_zerocopy
from tests.rx_helpers import PATTERN, read_verified, sending, tcp_pair
from zcnet.errors import BufferLifetimeError
from zcnet.netns import Netns
from zcnet.receiver import Chunk, Receiver, RecvPolicy

MIB = 1024 * 1024

pytestmark = [requires_netns, requires_zerocopy]


def _recv_mapped(rx: Receiver, max_bytes: int) -> Chunk:
    chunk = rx.recv(max_bytes, timeout=30)
    assert chunk, "unexpected EOF"
    return chunk


def test_held_chunks_survive_later_receives(netns: Netns) -> None:
    total = 32 * MIB
    client, server = tcp_pair(netns)
    policy = RecvPolicy(window_bytes=256 * 1024, max_windows=4, rcvlowat=256 * 1024,
                        force_zerocopy=True)
    with Receiver(server, policy) as rx, sending(client, total):
        held: list[tuple[int, Chunk]] = []
        off = 0
        while len(held) < 12:  # more chunks than windows: the ring fills, then receives copy
            chunk = _recv_mapped(rx, 256 * 1024)
            held.append((off, chunk))
            off += len(chunk)
        st = rx.stats
        assert st.windows_mapped == 4 and st.windows_in_use == 4
        assert st.copy_reasons.get("windows_busy", 0) > 0
        assert sum(c.mapped for _, c in held) >= 4
        for o, c in held:  # every held chunk still shows its own bytes
            assert PATTERN.matches(o, c.view)
        for _, c in held:
            c.release()
        assert rx.stats.windows_in_use == 0
        off += read_verified(rx, total - off, max_bytes=256 * 1024, start=off)
        assert rx.stats.windows_mapped == 4  # no new mapping after warm-up


def test_released_chunk_raises(netns: Netns) -> None:
    client, server = tcp_pair(netns)
    with Receiver(server, RecvPolicy(force_zerocopy=True)) as rx, sending(client, 1 * MIB):
        chunk = _recv_mapped(rx, 1 * MIB)
        n = len(chunk)
        assert PATTERN.matches(0, chunk.view)
        chunk.release()
        chunk.release()  # idempotent
        assert len(chunk) == n
        with pytest.raises(BufferLifetimeError):
            _ = chunk.view
        with pytest.raises(BufferLifetimeError):
            chunk.tobytes()
        with _recv_mapped(rx, 1 * MIB) as c2:
            pass
        with pytest.raises(BufferLifetimeError):
            _ = c2.view
        read_verified(rx, 1 * MIB - n - len(c2), start=n + len(c2))


def test_user_slice_outliving_chunk_keeps_window(netns: Netns) -> None:
    total = 16 * MIB
    client, server = tcp_pair(netns)
    policy = RecvPolicy(window_bytes=512 * 1024, rcvlowat=512 * 1024, force_zerocopy=True)
    with Receiver(server, policy) as rx, sending(client, total):
        off = 0
        chunk = _recv_mapped(rx, 512 * 1024)
        assert chunk.mapped
        keep = chunk.view[100:4200]
        expected = bytes(PATTERN.block(off + 100, 4100))
        off += len(chunk)
        chunk.release()
        assert rx.stats.windows_in_use == 1  # the slice pins the window
        for _ in range(8):  # later receives must not reuse (and remap) the pinned window
            with _recv_mapped(rx, 512 * 1024) as c:
                assert PATTERN.matches(off, c.view)
                off += len(c)
        assert rx.stats.windows_mapped == 2
        assert keep == expected  # still the original bytes, no SIGBUS
        del keep
        gc.collect()
        assert rx.stats.windows_in_use == 0
        read_verified(rx, total - off, max_bytes=512 * 1024, start=off)
        assert rx.stats.windows_mapped == 2


def test_close_with_live_view_is_safe(netns: Netns) -> None:
    client, server = tcp_pair(netns)
    with sending(client, 4 * MIB, tolerate_reset=True):
        rx = Receiver(server, RecvPolicy(force_zerocopy=True))
        chunk = _recv_mapped(rx, 1 * MIB)
        view = chunk.view[:4096]
        rx.close()  # the window with a live view is left to the GC, not unmapped under it
        assert view == PATTERN.block(0, 4096)
        chunk.release()
        del view
        gc.collect()


def test_view_exported_further_keeps_window_until_gone(netns: Netns) -> None:
    """An object holding an export of chunk.view itself (like numpy.frombuffer) stays valid."""
    client, server = tcp_pair(netns)
    policy = RecvPolicy(window_bytes=256 * 1024, force_zerocopy=True)
    with Receiver(server, policy) as rx, sending(client, 8 * MIB):
        chunk = _recv_mapped(rx, 256 * 1024)
        n = len(chunk)
        holder = memoryview(chunk.view)  # an export *of* the chunk's view, not a slice
        chunk.release()  # cannot release a view with exports: left to the GC, chunk still dead
        with pytest.raises(BufferLifetimeError):
            _ = chunk.view
        off = n
        for _ in range(4):
            with _recv_mapped(rx, 256 * 1024) as c:
                assert PATTERN.matches(off, c.view)
                off += len(c)
        assert PATTERN.matches(0, holder)
        assert rx.stats.windows_in_use == 1
        del holder
        gc.collect()
        assert rx.stats.windows_in_use == 0
        read_verified(rx, 8 * MIB - off, max_bytes=256 * 1024, start=off)
