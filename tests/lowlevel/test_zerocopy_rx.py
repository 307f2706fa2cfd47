"""The TCP_ZEROCOPY_RECEIVE struct, libc call and windows, against the real kernel."""

from __future__ import annotations

import ctypes
import errno
import mmap
import select

import pytest

from tests.conftest import requires_zerocopy
from tests.rx_helpers import PATTERN, send_stream, tcp_pair
from zcnet.lowlevel.zerocopy_rx import (
    PAGE_SIZE,
    TcpZerocopyReceive,
    Window,
    ZerocopyCall,
    buffer_address,
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
