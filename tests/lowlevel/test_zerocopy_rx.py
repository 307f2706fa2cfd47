"""The TCP_ZEROCOPY_RECEIVE struct, libc call and windows, against the real kernel."""

from __future__ import annotations

import ctypes
import errno
import mmap
import select

import pytest

from tests.conftest import requires_zerocopy
from tests.rx_helpers import PATTERN, send_stream, tcp_pair
from zcnet._accel import speedups
from zcnet.lowlevel.zerocopy_rx import (
    PAGE_SIZE,
    CopyBuffer,
    CopyBuffers,
    TcpZerocopyReceive,
    Window,
    ZerocopyCall,
    buffer_address,
    zerocopy_call,
)


def test_struct_layout() -> None:
    assert ctypes.sizeof(TcpZerocopyReceive) == 64
    offsets = {name: getattr(TcpZerocopyReceive, name).offset for name, _ in
               TcpZerocopyReceive._fields_}
    assert offsets == {
        "address": 0, "length": 8, "recv_skip_hint": 12, "inq": 16, "err": 20,
        "copybuf_address": 24, "copybuf_len": 32, "flags": 36, "msg_control": 40,
        "msg_controllen": 48, "msg_flags": 56, "reserved": 60,
    }


def test_buffer_address_of_read_only_and_writable_buffers() -> None:
    anon = mmap.mmap(-1, PAGE_SIZE)
    c = ctypes.c_char.from_buffer(anon)
    assert buffer_address(anon) == ctypes.addressof(c)
    del c
    anon.resize(2 * PAGE_SIZE)  # buffer_address left no export behind
    anon.close()
    ro = b"read-only"
    assert buffer_address(ro) != 0
    with pytest.raises(TypeError):
        buffer_address(object())


def test_copybuf_len_must_stay_below_a_page() -> None:
    with pytest.raises(ValueError):
        ZerocopyCall(0, PAGE_SIZE)


def test_window_busy_probe_tracks_exports() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with client, server:
        w = Window(server.fileno(), 4 * PAGE_SIZE)
        assert not w.busy()
        v = w.view(PAGE_SIZE)
        s = v[10:20]
        assert w.busy()
        v.release()
        assert w.busy()  # the slice still holds the export
        del s
        assert not w.busy()
        assert w.close()


def test_window_close_refused_with_live_view() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with client, server:
        w = Window(server.fileno(), PAGE_SIZE)
        v = w.view(PAGE_SIZE)
        assert not w.close()
        v.release()
        assert w.close()


def test_window_size_checked() -> None:
    with pytest.raises(ValueError):
        Window(0, 1000)


@requires_zerocopy
def test_one_call_small_read_goes_to_copybuf() -> None:
    """Fewer queued bytes than copybuf_len: the kernel copies them all (the "small read" path)."""
    client, server = tcp_pair(None, host="127.0.0.1")
    with client, server:
        send_stream(client, 1000, zerocopy=False, close=False)
        select.select([server], [], [], 10)
        w = Window(server.fileno(), 16 * PAGE_SIZE)
        call = ZerocopyCall(server.fileno(), PAGE_SIZE - 1)
        zc = call(w.address, w.size)
        assert (zc.length, zc.copybuf_len, zc.recv_skip_hint) == (0, 1000, 0)
        assert PATTERN.matches(0, call.copybuf[:1000])
        client.close()
        select.select([server], [], [], 10)
        with pytest.raises(OSError) as info:
            call(w.address, w.size)
        assert info.value.errno == errno.EIO  # EOF with nothing left
        assert w.close()


@requires_zerocopy
def test_call_on_non_tcp_fd_fails() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        call = ZerocopyCall(udp.fileno())
        with pytest.raises(OSError):
            call(0, PAGE_SIZE)


class _Chunk:
    """Stands in for receiver.Chunk in the pure-Python twin (a view and ``mapped``)."""

    def __init__(self, view: memoryview, mapped: bool) -> None:
        self.view, self.mapped = view, mapped


def _active_call(fd: int) -> ZerocopyCall[object]:
    """The active implementation's receive calls (with the Chunk type it accepts)."""
    from zcnet.receiver import Chunk

    return zerocopy_call(fd, PAGE_SIZE - 1, Chunk)


def test_recv_copy_fills_a_copy_buffer_and_pins_it() -> None:
    client, server = tcp_pair(None, host="127.0.0.1")
    with client, server:
        call = _active_call(server.fileno())
        server.setblocking(False)
        buf = CopyBuffer(64 * 1024)
        assert call.recv_copy(buf, 4096) is None  # nothing there: EAGAIN
        send_stream(client, 10_000, zerocopy=False, close=False)
        select.select([server], [], [], 10)
        chunk = call.recv_copy(buf, 4096)
        assert chunk is not None and len(chunk) == 4096 and not chunk.mapped
        assert PATTERN.matches(0, chunk.view)
        assert buf.busy()
        view = chunk.view[10:20]
        chunk.release()
        assert buf.busy()  # the slice still shows the buffer's bytes
        assert view == PATTERN.block(10, 10)
        del view
        assert not buf.busy()
        rest = call.recv_copy(buf, 64 * 1024)
        assert rest is not None and len(rest) == 10_000 - 4096
        assert PATTERN.matches(4096, rest.view)
        client.close()
        select.select([server], [], [], 10)
        rest.release()
        eof = call.recv_copy(buf, 100)
        assert eof is not None and len(eof) == 0


def test_copy_buffers_reuse_grow_and_run_out() -> None:
    bufs = CopyBuffers(2, 4 * PAGE_SIZE)
    a = bufs.get(100)
    assert a is not None and a.size == PAGE_SIZE
    assert bufs.get(100) is a  # free: the same one again
    big = bufs.get(10 * PAGE_SIZE)  # grown, capped at max_size
    assert big is not None and big.size == 4 * PAGE_SIZE
    held = memoryview(big.memory)  # stands in for a live chunk (pure Python probe)
    if big.group is not None:
        held.release()
        held = memoryview(speedups.BufferBase(big.memory, group=big.group))  # type: ignore[union-attr]
    other = bufs.get(100)
    assert other is not None and other is not big
    held2 = memoryview(other.memory) if other.group is None else memoryview(
        speedups.BufferBase(other.memory, group=other.group))  # type: ignore[union-attr]
    assert bufs.get(100) is None  # both held
    assert bufs.busy() == 2
    del held, held2
    assert bufs.get(100) is big
    bufs.close()


@pytest.mark.skipif(speedups is None, reason="checks the compiled ZerocopyReceive's arguments")
def test_compiled_receive_checks_its_arguments() -> None:
    assert speedups is not None
    from zcnet.receiver import Chunk

    with pytest.raises(TypeError):
        speedups.ZerocopyReceive(0, PAGE_SIZE - 1, _Chunk)  # not a ChunkBase subclass
    with pytest.raises(ValueError):
        speedups.ZerocopyReceive(0, PAGE_SIZE, Chunk)
    client, server = tcp_pair(None, host="127.0.0.1")
    with client, server:
        call = speedups.ZerocopyReceive(server.fileno(), PAGE_SIZE - 1, Chunk)
        w = Window(server.fileno(), PAGE_SIZE)
        with pytest.raises(ValueError):
            call.receive(w, 2 * PAGE_SIZE, True)  # longer than the window

        class NoGroup:
            memory = w.memory
            group = None

        with pytest.raises(TypeError):
            call.receive(NoGroup(), PAGE_SIZE, True)
        with pytest.raises(TypeError):
            call.recv_copy(NoGroup(), 10)
        with pytest.raises(TypeError):
            call.receive(w, PAGE_SIZE)  # type: ignore[call-arg]
        assert w.close()
